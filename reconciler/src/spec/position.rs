//! Where each value of a YAML document is: a tree of line/column marks built from
//! yaml-rust2's marked events, looked up by field path. serde_yaml decides what the document
//! means; this only says where things are, so every diagnostic can point at its line.

use std::fmt;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A field path such as `spec.aws.subnets[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(pub Vec<Seg>);

impl Path {
    /// Parses `a.b[2].c`.
    pub fn parse(s: &str) -> Self {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
            if !key.is_empty() {
                segs.push(Seg::Key(key.to_string()));
            }
            for idx in rest.split('[') {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    segs.push(Seg::Index(i));
                }
            }
        }
        Path(segs)
    }

    /// This path with one more key.
    pub fn key(&self, k: &str) -> Path {
        let mut p = self.0.clone();
        p.push(Seg::Key(k.to_string()));
        Path(p)
    }

    /// This path with one more index.
    pub fn index(&self, i: usize) -> Path {
        let mut p = self.0.clone();
        p.push(Seg::Index(i));
        Path(p)
    }

    /// From a JSON pointer (`/spec/aws/subnets/1`).
    pub fn from_pointer(ptr: &str) -> Path {
        Path(
            ptr.split('/')
                .skip(1)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let s = s.replace("~1", "/").replace("~0", "~");
                    match s.parse::<usize>() {
                        Ok(i) => Seg::Index(i),
                        Err(_) => Seg::Key(s),
                    }
                })
                .collect(),
        )
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        if first {
            f.write_str("(document)")?;
        }
        Ok(())
    }
}

/// A line and column, both 1-based.
pub type Mark = (usize, usize);

#[derive(Debug)]
enum Node {
    Map {
        mark: Mark,
        entries: Vec<(String, Mark, Node)>,
    },
    Seq {
        mark: Mark,
        items: Vec<Node>,
    },
    Leaf {
        mark: Mark,
    },
}

impl Node {
    fn mark(&self) -> Mark {
        match self {
            Node::Map { mark, .. } | Node::Seq { mark, .. } | Node::Leaf { mark } => *mark,
        }
    }
}

/// The marks of one document.
#[derive(Debug)]
pub struct Positions {
    root: Option<Node>,
}

impl Positions {
    /// Builds the marks of `text`; an unparsable text has none (everything points at 1:1).
    pub fn of(text: &str) -> Self {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return Positions { root: None };
        }
        Positions { root: b.root }
    }

    /// Where the value at `path` starts, or where the deepest existing part of it is.
    pub fn value(&self, path: &Path) -> Mark {
        self.walk(path).1
    }

    /// Where the key of the last step of `path` is (the value's mark for indexes), or where the
    /// deepest existing part of it is.
    pub fn key(&self, path: &Path) -> Mark {
        self.walk(path).0
    }

    fn walk(&self, path: &Path) -> (Mark, Mark) {
        let Some(mut node) = self.root.as_ref() else {
            return ((1, 1), (1, 1));
        };
        // The document itself is reported at its start.
        let mut key_mark = (1, 1);
        for seg in &path.0 {
            let next = match (node, seg) {
                (Node::Map { entries, .. }, Seg::Key(k)) => entries
                    .iter()
                    .find(|(name, _, _)| name == k)
                    .map(|(_, km, v)| (*km, v)),
                (Node::Seq { items, .. }, Seg::Index(i)) => items.get(*i).map(|v| (v.mark(), v)),
                _ => None,
            };
            match next {
                Some((km, v)) => {
                    key_mark = km;
                    node = v;
                }
                None => return (key_mark, key_mark),
            }
        }
        (key_mark, node.mark())
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
}

enum Frame {
    Map {
        mark: Mark,
        entries: Vec<(String, Mark, Node)>,
        key: Option<(String, Mark)>,
    },
    Seq {
        mark: Mark,
        items: Vec<Node>,
    },
}

fn mark_of(m: Marker) -> Mark {
    (m.line(), m.col() + 1)
}

impl Builder {
    fn push_node(&mut self, node: Node, key_text: Option<String>) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some((k, km)) => entries.push((k, km, node)),
                None => *key = Some((key_text.unwrap_or_else(|| "?".into()), node.mark())),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, m: Marker) {
        let mark = mark_of(m);
        match ev {
            Event::Scalar(text, ..) => self.push_node(Node::Leaf { mark }, Some(text)),
            Event::Alias(_) => self.push_node(Node::Leaf { mark }, None),
            Event::MappingStart(..) => self.stack.push(Frame::Map {
                mark,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq {
                mark,
                items: Vec::new(),
            }),
            Event::MappingEnd | Event::SequenceEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Map { mark, entries, .. }) => Node::Map { mark, entries },
                    Some(Frame::Seq { mark, items }) => Node::Seq { mark, items },
                    None => return,
                };
                self.push_node(node, None);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "a: 1\nb:\n  c: x\n  list:\n    - one\n    - two\n";

    #[test]
    fn finds_keys_and_values() {
        let p = Positions::of(DOC);
        assert_eq!(p.key(&Path::parse("b.c")), (3, 3));
        assert_eq!(p.value(&Path::parse("b.c")), (3, 6));
        assert_eq!(p.value(&Path::parse("b.list[1]")), (6, 7));
        assert_eq!(p.value(&Path::parse("a")), (1, 4));
    }

    #[test]
    fn missing_paths_point_at_the_deepest_existing_key() {
        let p = Positions::of(DOC);
        assert_eq!(p.key(&Path::parse("b.nope.deeper")), (2, 1));
    }

    #[test]
    fn paths_print_and_parse() {
        let p = Path::parse("spec.aws.subnets[1]");
        assert_eq!(p.to_string(), "spec.aws.subnets[1]");
        assert_eq!(Path::from_pointer("/spec/aws/subnets/1"), p);
        assert_eq!(Path::default().to_string(), "(document)");
    }
}
