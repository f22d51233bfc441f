//! XPath 1.0 tokens (XPath 1.0 §3.7, with its disambiguation rules) and
//! the checks made on them at compile time.

use super::is_xpath_space;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
    Literal(String),
    Number,
    Slash,
    DoubleSlash,
    Dot,
    DotDot,
    At,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    /// `|`, `+`, `-`, `=`, `!=`, `<`, `<=`, `>`, `>=`, `*` (multiply), `and`, `or`, `mod`, `div`.
    Operator,
    /// `*` as a name test.
    Star,
    Axis,
    NodeType(String),
    Function(Option<String>, String),
    /// `prefix:local`, `local`, or `prefix:*` (local = "*").
    Name(Option<String>, String),
    Variable(Option<String>, String),
}

pub(super) fn tokenize(source: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens: Vec<Token> = Vec::new();
    let mut i = 0;
    let skip_space = |mut j: usize| {
        while j < chars.len() && is_xpath_space(chars[j]) {
            j += 1;
        }
        j
    };
    while {
        i = skip_space(i);
        i < chars.len()
    } {
        // XPath 1.0 §3.7: after a token that can end an operand, `*` and
        // names are operators.
        let operator_position = matches!(
            tokens.last(),
            Some(
                Token::Literal(_)
                    | Token::Number
                    | Token::Dot
                    | Token::DotDot
                    | Token::RParen
                    | Token::RBracket
                    | Token::Star
                    | Token::NodeType(_)
                    | Token::Name(..)
                    | Token::Variable(..)
            )
        );
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (token, len) = match c {
            '(' => (Token::LParen, 1),
            ')' => (Token::RParen, 1),
            '[' => (Token::LBracket, 1),
            ']' => (Token::RBracket, 1),
            ',' => (Token::Comma, 1),
            '@' => (Token::At, 1),
            '|' | '+' | '-' | '=' => (Token::Operator, 1),
            '!' if next == Some('=') => (Token::Operator, 2),
            '<' | '>' if next == Some('=') => (Token::Operator, 2),
            '<' | '>' => (Token::Operator, 1),
            '/' if next == Some('/') => (Token::DoubleSlash, 2),
            '/' => (Token::Slash, 1),
            '.' if next == Some('.') => (Token::DotDot, 2),
            '.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                (Token::Number, number_len(&chars[i..]))
            }
            '.' => (Token::Dot, 1),
            '0'..='9' => (Token::Number, number_len(&chars[i..])),
            '"' | '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&q| q == c)
                    .ok_or("unterminated string literal")?;
                (
                    Token::Literal(chars[i + 1..i + 1 + end].iter().collect()),
                    end + 2,
                )
            }
            '*' if operator_position => (Token::Operator, 1),
            '*' => (Token::Star, 1),
            '$' => {
                let (prefix, local, len) =
                    qname(&chars[i + 1..]).ok_or("'$' must be followed by a variable name")?;
                (Token::Variable(prefix, local), len + 1)
            }
            c if is_name_start(c) => {
                let (prefix, local, len) =
                    qname(&chars[i..]).expect("starts with a name character");
                if operator_position {
                    if prefix.is_none() && matches!(local.as_str(), "and" | "or" | "mod" | "div") {
                        (Token::Operator, len)
                    } else {
                        return Err(format!(
                            "unexpected name '{local}' (an operator was expected)"
                        ));
                    }
                } else {
                    let after = skip_space(i + len);
                    if prefix.is_none()
                        && chars.get(after) == Some(&':')
                        && chars.get(after + 1) == Some(&':')
                    {
                        (Token::Axis, after + 2 - i)
                    } else if chars.get(after) == Some(&'(') && local != "*" {
                        match (prefix, local.as_str()) {
                            (None, "node" | "text" | "comment" | "processing-instruction") => {
                                (Token::NodeType(local), len)
                            }
                            (prefix, _) => (Token::Function(prefix, local), len),
                        }
                    } else {
                        (Token::Name(prefix, local), len)
                    }
                }
            }
            other => return Err(format!("unexpected character '{other}'")),
        };
        tokens.push(token);
        i += len;
    }
    Ok(tokens)
}

fn number_len(chars: &[char]) -> usize {
    let mut len = chars.iter().take_while(|c| c.is_ascii_digit()).count();
    if chars.get(len) == Some(&'.') {
        len += 1;
        len += chars[len..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
    }
    len
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || c == '-' || c == '.' || c.is_numeric() || c == '\u{b7}'
}

/// `NCName`, `NCName:NCName` or `NCName:*` at the start of `chars`.
fn qname(chars: &[char]) -> Option<(Option<String>, String, usize)> {
    if !chars.first().is_some_and(|&c| is_name_start(c)) {
        return None;
    }
    let first = chars.iter().take_while(|&&c| is_name_char(c)).count();
    let name: String = chars[..first].iter().collect();
    if chars.get(first) == Some(&':') {
        if chars.get(first + 1) == Some(&'*') {
            return Some((Some(name), "*".to_owned(), first + 2));
        }
        if chars.get(first + 1).is_some_and(|&c| is_name_start(c)) {
            let second = chars[first + 1..]
                .iter()
                .take_while(|&&c| is_name_char(c))
                .count();
            let local = chars[first + 1..first + 1 + second].iter().collect();
            return Some((Some(name), local, first + 1 + second));
        }
    }
    Some((None, name, first))
}

/// XPath 1.0 core functions that sxd-xpath implements, with their arity.
pub(super) const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("last", 0, 0),
    ("position", 0, 0),
    ("count", 1, 1),
    ("local-name", 0, 1),
    ("namespace-uri", 0, 1),
    ("name", 0, 1),
    ("string", 0, 1),
    ("concat", 2, usize::MAX),
    ("starts-with", 2, 2),
    ("contains", 2, 2),
    ("substring-before", 2, 2),
    ("substring-after", 2, 2),
    ("substring", 2, 3),
    ("string-length", 0, 1),
    ("normalize-space", 0, 1),
    ("translate", 3, 3),
    ("boolean", 1, 1),
    ("not", 1, 1),
    ("true", 0, 0),
    ("false", 0, 0),
    ("number", 0, 1),
    ("sum", 1, 1),
    ("floor", 1, 1),
    ("ceiling", 1, 1),
    ("round", 1, 1),
];

/// Checks what sxd-xpath would only find at evaluation time: prefixes bound
/// in the policy, no variables, known functions called with a valid number of
/// arguments.
pub(super) fn check_names(tokens: &[Token], namespaces: &[(String, String)]) -> Result<(), String> {
    let bound = |prefix: &str| prefix == "xml" || namespaces.iter().any(|(p, _)| p == prefix);
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Name(Some(prefix), _) if !bound(prefix) => {
                return Err(format!(
                    "undefined namespace prefix '{prefix}' (declare it in [namespaces])"
                ))
            }
            Token::Variable(_, name) => {
                return Err(format!("variables are not available (${name})"))
            }
            Token::Function(Some(prefix), local) => {
                return Err(format!("unknown function {prefix}:{local}()"))
            }
            Token::Function(None, name) => {
                let Some(&(_, min, max)) = FUNCTIONS.iter().find(|(f, _, _)| f == name) else {
                    return Err(format!("unknown function {name}()"));
                };
                let args = argument_count(&tokens[i + 1..]);
                if args < min || args > max {
                    let expected = match (min, max) {
                        (min, usize::MAX) => format!("at least {min}"),
                        (min, max) if min == max => format!("{min}"),
                        (min, max) => format!("{min} to {max}"),
                    };
                    let plural = if (min, max) == (1, 1) { "" } else { "s" };
                    return Err(format!(
                        "{name}() takes {expected} argument{plural}, not {args}"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Arguments of the call whose `(` starts `tokens` (unbalanced input is left
/// for the XPath parser to report).
fn argument_count(tokens: &[Token]) -> usize {
    let mut depth = 0usize;
    let mut commas = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return if i == 1 { 0 } else { commas + 1 };
                }
            }
            Token::Comma if depth == 1 => commas += 1,
            _ => {}
        }
    }
    commas + 1
}
