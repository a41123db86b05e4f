//! The HTTP/1.1 that `serve` and an OpenAI-compatible client speak, over `std::net`: one
//! request per connection (`Connection: close`), bodies framed by `Content-Length` or chunked
//! transfer encoding, plain `http://` only (no TLS; docs/dependencies.md says why no HTTP crate).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest request or response head (status line + headers) read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body read (a chat completion is far smaller).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// One parsed message: its first line, headers (names lower-cased) and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one message (request or response) from `reader`. `body_until_eof`: a response with
/// neither Content-Length nor chunked encoding runs to the end of the connection.
pub fn read_message(reader: &mut impl BufRead, body_until_eof: bool) -> Result<Message, String> {
    let mut head_bytes = 0;
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(|e| format!("reading the message head: {e}"))?;
        if n == 0 {
            return Err(if lines.is_empty() { "the connection closed before any data".into() } else { "the connection closed inside the message head".into() });
        }
        head_bytes += n;
        if head_bytes > MAX_HEAD {
            return Err(format!("the message head is over {MAX_HEAD} bytes"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let start = lines.remove(0);
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("malformed header line `{line}`"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut message = Message { start, headers, body: Vec::new() };
    let chunked = message.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        message.body = read_chunked(reader)?;
    } else if let Some(length) = message.header("content-length") {
        let length: usize = length.parse().map_err(|_| format!("bad Content-Length `{length}`"))?;
        if length > MAX_BODY {
            return Err(format!("the body of {length} bytes is over {MAX_BODY}"));
        }
        message.body = vec![0; length];
        reader.read_exact(&mut message.body).map_err(|e| format!("reading a body of {length} bytes: {e}"))?;
    } else if body_until_eof {
        reader.take(MAX_BODY as u64 + 1).read_to_end(&mut message.body).map_err(|e| format!("reading the body: {e}"))?;
        if message.body.len() > MAX_BODY {
            return Err(format!("the body is over {MAX_BODY} bytes"));
        }
    }
    Ok(message)
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("reading a chunk size: {e}"))?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size `{}`", line.trim()))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let mut trailer = String::new();
                let n = reader.read_line(&mut trailer).map_err(|e| format!("reading the trailers: {e}"))?;
                if n == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(format!("the body is over {MAX_BODY} bytes"));
        }
        let at = body.len();
        body.resize(at + size, 0);
        reader.read_exact(&mut body[at..]).map_err(|e| format!("reading a chunk: {e}"))?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).map_err(|e| format!("reading a chunk end: {e}"))?;
    }
}

/// `http://host[:port]/path` split into (host, port, path).
pub fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = match url.strip_prefix("http://") {
        Some(rest) => rest,
        None if url.starts_with("https://") => {
            return Err(format!("{url}: https is not supported (plain http only; put a local TLS-terminating proxy in front)"))
        }
        None => return Err(format!("{url}: not an http:// URL")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host, port.parse::<u16>().map_err(|_| format!("{url}: bad port `{port}`"))?)
        }
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port, path.to_string()))
}

/// A response: status code and body text.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `POST url` with a JSON `body` and extra `headers`; `timeout` bounds the connect and each
/// read or write (a generation that sends nothing for that long fails).
pub fn post_json(url: &str, headers: &[(String, String)], body: &str, timeout: Duration) -> Result<Response, String> {
    let (host, port, path) = split_url(url)?;
    let addrs: Vec<_> = (host.as_str(), port).to_socket_addrs().map_err(|e| format!("resolving {host}:{port}: {e}"))?.collect();
    let mut last = format!("{host}:{port} resolves to no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream.set_read_timeout(Some(timeout)).and_then(|_| stream.set_write_timeout(Some(timeout))).map_err(|e| e.to_string())?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).and_then(|_| stream.flush()).map_err(|e| format!("sending the request: {e}"))?;
    let message = read_message(&mut BufReader::new(stream), true)?;
    let status = message.start.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok());
    let status = status.ok_or_else(|| format!("malformed status line `{}`", message.start))?;
    let body = String::from_utf8(message.body).map_err(|_| "the response body is not UTF-8".to_string())?;
    Ok(Response { status, body })
}

/// Writes a whole response with a JSON body and closes the exchange.
pub fn write_json_response(stream: &mut impl Write, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Error",
    };
    write!(stream, "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(split_url("http://127.0.0.1:8000/v1/chat/completions").unwrap(), ("127.0.0.1".into(), 8000, "/v1/chat/completions".into()));
        assert_eq!(split_url("http://judge.lan/x").unwrap(), ("judge.lan".into(), 80, "/x".into()));
        assert_eq!(split_url("http://[::1]:9/").unwrap(), ("::1".into(), 9, "/".into()));
        assert!(split_url("https://api.example.com/v1").unwrap_err().contains("https is not supported"));
        assert!(split_url("ftp://x").unwrap_err().contains("not an http:// URL"));
        assert!(split_url("http://h:port/").unwrap_err().contains("bad port"));
    }

    #[test]
    fn messages_are_framed_by_length_chunks_or_eof() {
        let read = |raw: &str, eof: bool| read_message(&mut raw.as_bytes(), eof);
        let m = read("POST /v1 HTTP/1.1\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloEXTRA", false).unwrap();
        assert_eq!((m.start.as_str(), m.header("x-a"), m.body.as_slice()), ("POST /v1 HTTP/1.1", Some("b"), &b"hello"[..]));
        let m = read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", true).unwrap();
        assert_eq!(m.body, b"abcde");
        let m = read("HTTP/1.0 200 OK\r\n\r\nto the end", true).unwrap();
        assert_eq!(m.body, b"to the end");
        assert!(read("", false).unwrap_err().contains("before any data"));
        assert!(read("GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort", false).unwrap_err().contains("9 bytes"));
        assert!(read("GET / HTTP/1.1\r\nno colon\r\n\r\n", false).unwrap_err().contains("malformed header"));
    }
}
