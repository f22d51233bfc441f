//! The streaming subset: which expressions the one-pass plan evaluates.

use super::lexer::Token;
use super::{AttributeStep, NameTest, PathPattern, Step, XML_NS};

pub(super) enum RawPiece {
    Literal(String),
    Path(PathPattern, bool),
}

/// Recognises the streaming subset; `None` sends the expression to sxd-xpath.
pub(super) struct StreamingParser<'t> {
    tokens: &'t [Token],
    pos: usize,
    namespaces: &'t [(String, String)],
}

impl<'t> StreamingParser<'t> {
    pub(super) fn new(tokens: &'t [Token], namespaces: &'t [(String, String)]) -> Self {
        StreamingParser {
            tokens,
            pos: 0,
            namespaces,
        }
    }

    pub(super) fn parse(mut self) -> Option<Vec<RawPiece>> {
        let pieces = match self.peek()? {
            Token::Function(None, name) if name == "concat" => {
                self.pos += 1;
                self.expect(&Token::LParen)?;
                let mut pieces = vec![self.argument()?];
                while self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                    pieces.push(self.argument()?);
                }
                self.expect(&Token::RParen)?;
                pieces
            }
            _ => vec![self.argument()?],
        };
        (self.pos == self.tokens.len()).then_some(pieces)
    }

    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.pos)
    }

    fn expect(&mut self, token: &Token) -> Option<()> {
        (self.peek()? == token).then(|| self.pos += 1)
    }

    /// A literal, a path, `string(path?)` or `normalize-space(path?)`.
    fn argument(&mut self) -> Option<RawPiece> {
        match self.peek()? {
            Token::Literal(text) => {
                self.pos += 1;
                Some(RawPiece::Literal(text.clone()))
            }
            Token::Function(None, name) if name == "string" || name == "normalize-space" => {
                let normalize = name == "normalize-space";
                self.pos += 1;
                self.expect(&Token::LParen)?;
                let path = if self.peek() == Some(&Token::RParen) {
                    PathPattern {
                        steps: Vec::new(),
                        attribute: None,
                    }
                } else {
                    self.path()?
                };
                self.expect(&Token::RParen)?;
                Some(RawPiece::Path(path, normalize))
            }
            _ => Some(RawPiece::Path(self.path()?, false)),
        }
    }

    /// A relative location path of `.`, element name tests and a final
    /// attribute step, separated by `/` or `//`.
    fn path(&mut self) -> Option<PathPattern> {
        let mut steps = Vec::new();
        let mut descendant = false;
        loop {
            match self.peek()? {
                Token::Dot => self.pos += 1,
                Token::Star => {
                    self.pos += 1;
                    steps.push(Step {
                        descendant,
                        test: NameTest::Any,
                    });
                    descendant = false;
                }
                Token::Name(prefix, local) => {
                    self.pos += 1;
                    let namespace = self.namespace(prefix.as_deref())?;
                    let test = if local == "*" {
                        NameTest::Namespace(namespace)
                    } else {
                        NameTest::Name {
                            namespace,
                            local: local.clone(),
                        }
                    };
                    steps.push(Step { descendant, test });
                    descendant = false;
                }
                Token::At => {
                    self.pos += 1;
                    let Token::Name(prefix, local) = self.peek()? else {
                        return None;
                    };
                    if local == "*" {
                        // Attribute order within an element is not defined by
                        // XPath; leave `@*` to one evaluator.
                        return None;
                    }
                    self.pos += 1;
                    let attribute = AttributeStep {
                        descendant,
                        namespace: self.namespace(prefix.as_deref())?,
                        local: local.clone(),
                    };
                    return Some(PathPattern {
                        steps,
                        attribute: Some(attribute),
                    });
                }
                _ => return None,
            }
            match self.peek() {
                Some(Token::Slash) => self.pos += 1,
                Some(Token::DoubleSlash) => {
                    self.pos += 1;
                    descendant = true;
                }
                // `a//.` selects `a` first in document order: the pending
                // descendant step changes nothing.
                _ => {
                    return Some(PathPattern {
                        steps,
                        attribute: None,
                    })
                }
            }
        }
    }

    fn namespace(&self, prefix: Option<&str>) -> Option<String> {
        match prefix {
            None => Some(String::new()),
            Some("xml") => Some(XML_NS.to_owned()),
            Some(prefix) => self
                .namespaces
                .iter()
                .find(|(p, _)| p == prefix)
                .map(|(_, uri)| uri.clone()),
        }
    }
}
