//! Plain text of HTML documents: a small tag stripper (script/style bodies dropped,
//! block-level tags become line breaks, the common character entities decoded, blank-line
//! runs collapsed). Enough for documentation pages; not a browser.

const BLOCK_TAGS: [&str; 18] = [
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "pre",
    "dt",
    "dd",
    "dl",
    "title",
    "h1",
    "h2",
    "h3",
    "h4",
    "blockquote",
];

/// Plain text of an HTML document.
pub fn html_to_text(html: &str) -> String {
    let mut raw = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        raw.push_str(&decode_entities(&rest[..lt]));
        let after = &rest[lt + 1..];
        let Some(gt) = after.find('>') else {
            rest = "";
            break;
        };
        let tag = &after[..gt];
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        rest = &after[gt + 1..];
        if (name == "script" || name == "style") && !tag.starts_with('/') && !tag.ends_with('/') {
            // Skip to the matching close tag.
            let close = format!("</{name}");
            rest = match rest.to_ascii_lowercase().find(&close) {
                Some(at) => &rest[at..],
                None => "",
            };
        } else if BLOCK_TAGS.contains(&name.as_str()) {
            raw.push('\n');
        }
    }
    raw.push_str(&decode_entities(rest));
    // Tidy: collapse spaces inside lines, trim lines, keep at most one blank line.
    let mut out = String::with_capacity(raw.len());
    let mut blank_run = 0;
    for line in raw.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(&words.join(" "));
    }
    out.push('\n');
    out
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find(';').filter(|&e| e <= 10);
        let decoded = end.and_then(|e| {
            let name = &after[..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ if name.starts_with("#x") || name.starts_with("#X") => {
                    u32::from_str_radix(&name[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if name.starts_with('#') => name[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &after[e + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_scripts_and_decodes_entities() {
        let html = "<html><head><title>T &amp; Q</title><style>p{x:1}</style></head>\
                    <body><p>Hello,   <b>world</b> &lt;3 &#xD55C;&#44397;</p><script>var a=1<2;</script>\
                    <ul><li>one</li><li>two &unknown; x</li></ul></body></html>";
        assert_eq!(
            html_to_text(html),
            "T & Q\n\nHello, world <3 한국\n\none\n\ntwo &unknown; x\n"
        );
    }
}
