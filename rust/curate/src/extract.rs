//! Prompts, answers and labels as text, without regular expressions: `{{name}}` templates,
//! answer extraction by a fixed set of rules, answer comparison, hard/easy labels.

use serde::Deserialize;

/// How the answer is taken from a reply (after its thinking, see [`strip_thinking`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The content of the last `\boxed{...}` (or `\fbox{...}`), braces matched.
    Boxed,
    /// The first non-empty line after the last occurrence of the marker.
    Marker,
    /// The last number (`-1,234.5`, `3/4`; thousands commas dropped).
    LastNumber,
    /// The last non-empty line.
    LastLine,
    /// The whole text, trimmed (for reference answers that are just the answer).
    Whole,
}

/// The reply's answer part: everything after the last `</think>` (a server that does not
/// split reasoning out leaves it inline), or the whole reply.
pub fn strip_thinking(reply: &str) -> &str {
    reply.rfind("</think>").map_or(reply, |at| &reply[at + "</think>".len()..])
}

/// The answer `rule` finds in `text` (`marker` for [`Rule::Marker`]), or None.
pub fn extract(text: &str, rule: Rule, marker: &str) -> Option<String> {
    let found = match rule {
        Rule::Boxed => last_boxed(text),
        Rule::Marker => {
            let at = text.rfind(marker)?;
            text[at + marker.len()..].lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
        }
        Rule::LastNumber => last_number(text),
        Rule::LastLine => text.lines().map(str::trim).rfind(|l| !l.is_empty()).map(str::to_string),
        Rule::Whole => Some(text.trim().to_string()),
    };
    found.filter(|s| !s.trim().is_empty())
}

fn last_boxed(text: &str) -> Option<String> {
    let start = ["\\boxed{", "\\fbox{"].iter().filter_map(|open| text.rfind(open).map(|i| i + open.len())).max()?;
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None
}

fn last_number(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut start = i;
        if start > 0 && chars[start - 1] == '-' {
            start -= 1;
        }
        let mut end = i;
        // Digits, thousands commas (a comma followed by a digit), one decimal point, one slash.
        let (mut dot, mut slash) = (false, false);
        while end < chars.len() {
            let c = chars[end];
            let next_digit = chars.get(end + 1).is_some_and(|d| d.is_ascii_digit());
            if c.is_ascii_digit() || (c == ',' && next_digit && !dot) {
                end += 1;
            } else if c == '.' && next_digit && !dot {
                dot = true;
                end += 1;
            } else if c == '/' && next_digit && !slash {
                slash = true;
                dot = false;
                end += 1;
            } else {
                break;
            }
        }
        last = Some(chars[start..end].iter().filter(|&&c| c != ',').collect::<String>());
        i = end;
    }
    last
}

/// The form two answers are compared in: trimmed, outer `$`, `\boxed{}`, `\text{}` and
/// parentheses removed, a trailing period dropped, whitespace removed, lower case.
pub fn normalize(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    loop {
        let before = s.clone();
        s = s.trim().trim_end_matches('.').trim().to_string();
        if s.len() >= 2 && s.starts_with('$') && s.ends_with('$') {
            s = s.trim_matches('$').to_string();
        }
        for open in ["\\boxed{", "\\text{", "\\mathrm{"] {
            if s.starts_with(open) && s.ends_with('}') {
                s = s[open.len()..s.len() - 1].to_string();
            }
        }
        if s.starts_with('(') && s.ends_with(')') && !s[1..s.len() - 1].contains(['(', ')']) {
            s = s[1..s.len() - 1].to_string();
        }
        if s == before {
            break;
        }
    }
    s.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_lowercase).collect()
}

fn as_number(s: &str) -> Option<f64> {
    let s: String = s.chars().filter(|&c| c != ',').collect();
    let s = s.strip_suffix('%').unwrap_or(&s);
    match s.split_once('/') {
        Some((a, b)) => {
            let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
            (b != 0.0).then(|| a / b)
        }
        None => s.parse::<f64>().ok().filter(|x| x.is_finite()),
    }
}

/// Whether `answer` matches `reference`: equal after [`normalize`], or both numbers within a
/// relative 1e-6 (`0.5` = `1/2` = `0.50`).
pub fn same_answer(answer: &str, reference: &str) -> bool {
    let (a, r) = (normalize(answer), normalize(reference));
    if a == r {
        return true;
    }
    match (as_number(&a), as_number(&r)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * y.abs().max(1.0),
        _ => false,
    }
}

/// The label a reply gives: among the words (runs of letters and digits, lower-cased) after the
/// last `marker` (the whole reply if empty or absent), the last one that is a label.
pub fn find_label(reply: &str, labels: &[String], marker: &str) -> Option<String> {
    let text = strip_thinking(reply);
    let text = if marker.is_empty() { text } else { text.rfind(marker).map_or(text, |at| &text[at + marker.len()..]) };
    let lower: Vec<String> = labels.iter().map(|l| l.to_lowercase()).collect();
    text.split(|c: char| !c.is_alphanumeric())
        .rev()
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .find_map(|w| lower.iter().position(|l| *l == w))
        .map(|i| labels[i].clone())
}

/// `{{name}}` placeholders of a template, in order (an unterminated `{{` is an error).
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| format!("`{{{{` without `}}}}` in `{}`", &rest[open..]))?;
        names.push(after[..close].trim().to_string());
        rest = &after[close + 2..];
    }
    Ok(names)
}

/// `template` with each `{{name}}` replaced by `value(name)` (names checked at config load).
pub fn render(template: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        out.push_str(&rest[..open]);
        out.push_str(&value(after[..close].trim()));
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_extracted_by_each_rule() {
        let reply = "Let x = 3.\nThen 2x = 6, so... \\boxed{\\frac{1}{2}} hmm, no: \\boxed{6}\nAnswer: 6 apples\n\nDone.";
        assert_eq!(extract(reply, Rule::Boxed, "").as_deref(), Some("6"));
        assert_eq!(extract("\\boxed{\\frac{1}{2}}.", Rule::Boxed, "").as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(extract("\\boxed{open", Rule::Boxed, ""), None);
        assert_eq!(extract(reply, Rule::Marker, "Answer:").as_deref(), Some("6 apples"));
        assert_eq!(extract("Answer:\n\n  (B)  \n", Rule::Marker, "Answer:").as_deref(), Some("(B)"));
        assert_eq!(extract("no marker", Rule::Marker, "Answer:"), None);
        assert_eq!(extract(reply, Rule::LastLine, "").as_deref(), Some("Done."));
        assert_eq!(extract("It costs 1,234.50 dollars, or -3/4 of 10.", Rule::LastNumber, "").as_deref(), Some("10"));
        assert_eq!(extract("so -3/4.", Rule::LastNumber, "").as_deref(), Some("-3/4"));
        assert_eq!(extract("total: 1,234.50.", Rule::LastNumber, "").as_deref(), Some("1234.50"));
        assert_eq!(extract("none here", Rule::LastNumber, ""), None);
        assert_eq!(extract("  42 \n", Rule::Whole, "").as_deref(), Some("42"));
        assert_eq!(extract("   ", Rule::Whole, ""), None);
        assert_eq!(strip_thinking("<think>Answer: 5</think>Answer: 7"), "Answer: 7");
    }

    #[test]
    fn answers_compare_after_normalisation_and_as_numbers() {
        assert!(same_answer("$\\boxed{ 12 }$.", "12"));
        assert!(same_answer("0.50", "1/2"));
        assert!(same_answer("1,000", "1000"));
        assert!(same_answer("(B)", "b"));
        assert!(same_answer("\\text{Paris}", "paris"));
        assert!(same_answer("x = 2", "x=2"));
        assert!(!same_answer("12", "13"));
        assert!(!same_answer("1/0", "0"));
        assert!(!same_answer("", "0"));
    }

    #[test]
    fn labels_are_the_last_label_word_after_the_marker() {
        let labels = vec!["easy".to_string(), "medium".to_string(), "hard".to_string()];
        assert_eq!(find_label("Not easy at all. Difficulty: HARD.", &labels, "").as_deref(), Some("hard"));
        assert_eq!(find_label("hard to say; Label: easy", &labels, "Label:").as_deref(), Some("easy"));
        assert_eq!(find_label("<think>it is hard</think>medium", &labels, "").as_deref(), Some("medium"));
        assert_eq!(find_label("hardly", &labels, ""), None);
        let korean = vec!["쉬움".to_string(), "어려움".to_string()];
        assert_eq!(find_label("판정: 어려움", &korean, "").as_deref(), Some("어려움"));
    }

    #[test]
    fn templates_name_and_fill_placeholders() {
        assert_eq!(placeholders("Q: {{question}} / {{ reference }}").unwrap(), vec!["question", "reference"]);
        assert!(placeholders("Q: {{question").unwrap_err().contains("without"));
        let filled = render("Q: {{question}}, A: {{ reference }}!", |n| n.to_uppercase());
        assert_eq!(filled, "Q: QUESTION, A: REFERENCE!");
        assert_eq!(render("no braces {x}", |_| String::new()), "no braces {x}");
    }
}
