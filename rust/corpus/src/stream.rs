//! Byte streams of corpus files (decompressed on the fly) and the lines in them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::format::Compression;
use crate::{Location, MalformedInput};

const BUFFER_BYTES: usize = 1 << 20;

/// The decompressed bytes of `path`. Gzip files may hold several members (as `cat a.gz b.gz`
/// makes), zstd files several frames; both are read to the end.
pub fn open(path: &Path, compression: Compression) -> std::io::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path)?;
    Ok(match compression {
        Compression::None => Box::new(BufReader::with_capacity(BUFFER_BYTES, file)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BUFFER_BYTES,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(BUFFER_BYTES, file)),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            BUFFER_BYTES,
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(BUFFER_BYTES, file))?,
        )),
    })
}

/// The lines of a stream, without terminators, numbered from 1. A line that is not UTF-8 is
/// an error for that line; a read error (a truncated or corrupt compressed stream) ends the
/// file with a fatal error.
pub struct Lines {
    path: std::path::PathBuf,
    reader: Option<Box<dyn BufRead + Send>>,
    line: u64,
    buf: Vec<u8>,
}

impl Lines {
    pub fn new(path: &Path, reader: Box<dyn BufRead + Send>) -> Lines {
        Lines {
            path: path.to_owned(),
            reader: Some(reader),
            line: 0,
            buf: Vec::new(),
        }
    }

    /// Number of the line last returned.
    pub fn line(&self) -> u64 {
        self.line
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remaining stream, for formats that read a file whole (HTML).
    pub fn take_reader(&mut self) -> Option<Box<dyn BufRead + Send>> {
        self.reader.take()
    }
}

impl Iterator for Lines {
    type Item = Result<String, MalformedInput>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.reader.as_mut()?;
        self.buf.clear();
        match reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => {
                self.reader = None;
                None
            }
            Ok(_) => {
                self.line += 1;
                while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                    self.buf.pop();
                }
                Some(match std::str::from_utf8(&self.buf) {
                    Ok(s) => Ok(s.to_owned()),
                    Err(e) => Err(MalformedInput::new(
                        &self.path,
                        Location::Line(self.line),
                        format!("invalid UTF-8: {e}"),
                    )),
                })
            }
            Err(e) => {
                self.reader = None;
                Some(Err(MalformedInput::fatal(
                    &self.path,
                    Location::Line(self.line + 1),
                    format!("read error (truncated or corrupt file?): {e}"),
                )))
            }
        }
    }
}
