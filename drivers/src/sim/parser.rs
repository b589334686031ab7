//! A small SCPI (IEEE 488.2 / SCPI-99) program-message parser for the
//! simulators: splits a line into message units on `;`, splits headers from
//! parameters, matches headers against a command tree written in the
//! manuals' notation (`[SOURce#]:VOLTage[:LEVel]`: upper case is the short
//! form, brackets are optional nodes, `#` a numeric suffix), and applies the
//! SCPI path rule (a header not starting with `:` or `*` is relative to the
//! previous command's path).

/// One node of a command pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    short: String,
    long: String,
    optional: bool,
    suffix: bool,
}

/// A command pattern, e.g. `[SOURce#]:VOLTage[:LEVel][:IMMediate][:AMPLitude]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    nodes: Vec<Node>,
}

impl Pattern {
    /// Compile the manual notation. Patterns are written in this crate, so a
    /// malformed one is a programming error caught by the unit tests; it
    /// compiles to a pattern that matches nothing rather than panicking.
    pub fn new(text: &str) -> Pattern {
        let mut nodes = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let optional = rest.starts_with('[');
            let end = if optional {
                rest.find(']').map(|i| i + 1).unwrap_or(rest.len())
            } else {
                rest.get(1..)
                    .and_then(|r| r.find([':', '[']))
                    .map(|i| i + 1)
                    .unwrap_or(rest.len())
            };
            let (tok, tail) = rest.split_at(end);
            rest = tail;
            let name = tok.trim_matches(|c| c == '[' || c == ']' || c == ':');
            let (name, suffix) = match name.strip_suffix('#') {
                Some(n) => (n, true),
                None => (name, false),
            };
            if name.is_empty() {
                return Pattern { nodes: Vec::new() };
            }
            let short: String = name
                .chars()
                .take_while(|c| !c.is_ascii_lowercase())
                .collect();
            nodes.push(Node {
                short: short.to_ascii_uppercase(),
                long: name.to_ascii_uppercase(),
                optional,
                suffix,
            });
        }
        Pattern { nodes }
    }

    /// Match header tokens (already split on `:`, no `?`). Returns the
    /// numeric suffix found (the last one given), and how many leading
    /// tokens form the "path" for the next command (all but the leaf).
    pub fn matches(&self, tokens: &[&str]) -> Option<Match> {
        let mut m = Match::default();
        if self.nodes.is_empty() {
            return None;
        }
        if match_from(&self.nodes, tokens, &mut m) {
            Some(m)
        } else {
            None
        }
    }
}

/// What a successful match found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Match {
    /// A numeric suffix given in the header (`SOUR2`, `CH1`).
    pub suffix: Option<u32>,
}

fn match_from(nodes: &[Node], tokens: &[&str], m: &mut Match) -> bool {
    let Some((node, rest_nodes)) = nodes.split_first() else {
        return tokens.is_empty();
    };
    if let Some((tok, rest_tokens)) = tokens.split_first() {
        if let Some(suffix) = token_matches(node, tok) {
            let saved = *m;
            if suffix.is_some() {
                m.suffix = suffix;
            }
            if match_from(rest_nodes, rest_tokens, m) {
                return true;
            }
            *m = saved;
        }
    }
    node.optional && match_from(rest_nodes, tokens, m)
}

/// Whether `tok` names `node`; `Some(suffix)` on a match.
fn token_matches(node: &Node, tok: &str) -> Option<Option<u32>> {
    let digits = tok.len() - tok.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (word, num) = tok.split_at(tok.len() - digits);
    let word = word.to_ascii_uppercase();
    let num = if num.is_empty() {
        None
    } else {
        Some(num.parse::<u32>().ok()?)
    };
    if num.is_some() && !node.suffix {
        // The whole token may be a keyword ending in a digit; not in our trees.
        return None;
    }
    if word == node.short || word == node.long {
        Some(num)
    } else {
        None
    }
}

/// One message unit of a program message: `HEADER[?] [param[,param]...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Header tokens, split on `:`, absolute (path rule applied).
    pub tokens: Vec<String>,
    /// The header tokens as written (without the path prefix).
    pub written: Vec<String>,
    /// A common command (`*IDN?`): the header without `*`.
    pub common: Option<String>,
    /// Ends in `?`.
    pub query: bool,
    /// Parameters, split on top-level commas, trimmed.
    pub params: Vec<String>,
}

/// Why a message unit could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    /// Empty header or characters not allowed in a header (-100 class).
    BadHeader,
}

/// Split a program message (one line) into message units on `;` outside
/// quotes and parentheses.
pub fn split_units(line: &str) -> Vec<&str> {
    split_top(line, ';')
}

/// Split on `sep` outside `"..."`, `'...'` and `(...)`.
pub fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, c) if c == sep && depth == 0 => {
                out.push(s.get(start..i).unwrap_or(""));
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(s.get(start..).unwrap_or(""));
    out
}

/// Parse one message unit. `path` is the current path (tokens of the
/// previous command's header minus its leaf); it is updated per the SCPI
/// path rule.
pub fn parse_unit(text: &str, path: &mut Vec<String>) -> Result<Unit, SyntaxError> {
    let text = text.trim();
    let (header, params) = match text.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let (header, query) = match header.strip_suffix('?') {
        Some(h) => (h, true),
        None => (header, false),
    };
    let params: Vec<String> = if params.trim().is_empty() {
        Vec::new()
    } else {
        split_top(params.trim(), ',')
            .into_iter()
            .map(|p| p.trim().to_string())
            .collect()
    };
    if let Some(name) = header.strip_prefix('*') {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(SyntaxError::BadHeader);
        }
        return Ok(Unit {
            tokens: Vec::new(),
            written: Vec::new(),
            common: Some(name.to_ascii_uppercase()),
            query,
            params,
        });
    }
    let (absolute, rel) = match header.strip_prefix(':') {
        Some(h) => (true, h),
        None => (false, header),
    };
    let rel_tokens: Vec<&str> = rel.split(':').collect();
    if rel_tokens
        .iter()
        .any(|t| t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        || rel_tokens
            .first()
            .and_then(|t| t.chars().next())
            .is_some_and(|c| c.is_ascii_digit())
    {
        return Err(SyntaxError::BadHeader);
    }
    let mut tokens: Vec<String> = if absolute { Vec::new() } else { path.clone() };
    tokens.extend(rel_tokens.iter().map(|t| t.to_string()));
    *path = tokens
        .get(..tokens.len().saturating_sub(1))
        .unwrap_or_default()
        .to_vec();
    Ok(Unit {
        tokens,
        written: rel_tokens.iter().map(|t| t.to_string()).collect(),
        common: None,
        query,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_short_long_optional_and_suffix() {
        let p = Pattern::new("[SOURce#]:VOLTage[:LEVel][:IMMediate][:AMPLitude]");
        let yes: &[(&[&str], Option<u32>)] = &[
            (&["VOLT"], None),
            (&["volt"], None),
            (&["VOLTAGE"], None),
            (&["SOUR", "VOLT"], None),
            (&["SOUR2", "VOLT"], Some(2)),
            (
                &["source3", "voltage", "level", "immediate", "amplitude"],
                Some(3),
            ),
            (&["VOLT", "AMPL"], None),
            (&["VOLT", "IMM", "AMPL"], None),
        ];
        for (toks, suffix) in yes {
            assert_eq!(p.matches(toks).map(|m| m.suffix), Some(*suffix), "{toks:?}");
        }
        let no: &[&[&str]] = &[
            &["VOL"],
            &["VOLTA"],
            &["SOURC", "VOLT"],
            &["VOLT2"],
            &["VOLT", "AMPL", "LEV"],
            &[],
            &["SOUR"],
        ];
        for toks in no {
            assert!(p.matches(toks).is_none(), "{toks:?}");
        }
        let ch = Pattern::new("CH#:VOLTage");
        assert_eq!(
            ch.matches(&["ch1", "volt"]).map(|m| m.suffix),
            Some(Some(1))
        );
        let err = Pattern::new("SYSTem:ERRor[:NEXT]");
        assert!(err.matches(&["SYST", "ERR"]).is_some());
        assert!(err.matches(&["SYSTEM", "ERROR", "NEXT"]).is_some());
        assert!(Pattern::new("").matches(&[]).is_none());
    }

    #[test]
    fn units_and_path_rule() {
        let mut path = Vec::new();
        let units: Vec<Unit> = split_units("SOUR:VOLT 5;CURR 1;:OUTP ON;*OPC?;MEAS:VOLT? (@1,2)")
            .into_iter()
            .map(|u| parse_unit(u, &mut path).unwrap())
            .collect();
        assert_eq!(units[0].tokens, ["SOUR", "VOLT"]);
        assert_eq!(units[0].params, ["5"]);
        assert_eq!(units[1].tokens, ["SOUR", "CURR"]);
        assert_eq!(units[2].tokens, ["OUTP"]);
        assert_eq!(units[3].common.as_deref(), Some("OPC"));
        assert!(units[3].query);
        assert_eq!(units[4].tokens, ["MEAS", "VOLT"]);
        assert_eq!(units[4].params, ["(@1,2)"]);
        assert!(units[4].query);
        let mut path = Vec::new();
        for bad in ["", "*", "VOLT::X", "VO-LT 1", ":", "1VOLT"] {
            assert_eq!(
                parse_unit(bad, &mut path),
                Err(SyntaxError::BadHeader),
                "{bad:?}"
            );
        }
        assert_eq!(split_top("a,\"b,c\",(d,e)", ','), ["a", "\"b,c\"", "(d,e)"]);
    }
}
