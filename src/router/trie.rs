//! The per-host path trie: a flat arena of nodes built once, then frozen.
//!
//! Each node has up to three kinds of children, tried in this order:
//!
//! 1. static children keyed by the exact segment bytes (a linear scan over a
//!    short boxed slice, or an [`FxHashMap`] once there are more than
//!    [`LINEAR_MAX`] of them, so 10,000 siblings still cost one hash);
//! 2. one `{param}` child (parameter names are per route, not per node);
//! 3. one `{*catch-all}` leaf.
//!
//! A search is a depth-first walk with backtracking whose depth is bounded by
//! the deepest pattern, not by the request. It is method-aware: reaching a
//! leaf that has no route for the request method records that leaf's `Allow`
//! value (first one only) and keeps backtracking, so a lower-priority pattern
//! that does allow the method still wins.

use super::hash::FxHashMap;
use super::pattern::{Pattern, Segment};
use super::{Method, MethodSet, Params};

/// Marker for "no child" in the `u32` arena links.
const NONE: u32 = u32::MAX;

/// Static children above this count are hashed instead of scanned.
pub(crate) const LINEAR_MAX: usize = 8;

/// Per-leaf method slots: one per [`Method`] plus one for any other token.
pub(crate) const SLOTS: usize = 10;

/// The slot for a method token that is not a [`Method`] (e.g. `PROPFIND`).
pub(crate) const OTHER_SLOT: usize = 9;

/// Result of a search in one trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A route for this path and method.
    Found(u32),
    /// The path matched, the method did not; index of the interned `Allow`.
    NotAllowed(u16),
    /// No pattern matched the path.
    NotFound,
}

/// A frozen, read-only trie (`Send + Sync`, no interior mutability).
pub(crate) struct PathTrie {
    nodes: Box<[Node]>,
    leaves: Box<[Leaf]>,
}

struct Node {
    statics: Statics,
    /// `{param}` child node, or `NONE`.
    param: u32,
    /// Leaf of a `{*rest}` child, or `NONE`.
    catch_all: u32,
    /// Leaf for patterns ending at this node, or `NONE`.
    leaf: u32,
}

enum Statics {
    Empty,
    Linear(Box<[(Box<[u8]>, u32)]>),
    Hashed(FxHashMap<Box<[u8]>, u32>),
}

impl Statics {
    #[inline]
    fn get(&self, seg: &[u8]) -> Option<u32> {
        match self {
            Statics::Empty => None,
            Statics::Linear(children) => children
                .iter()
                .find(|(key, _)| short_eq(key, seg))
                .map(|&(_, id)| id),
            Statics::Hashed(map) => map.get(seg).copied(),
        }
    }
}

/// Byte equality tuned for short path segments: a length check, then an
/// inline loop instead of a `memcmp` call.
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

struct Leaf {
    /// Route per method slot; a `methods = None` route fills every slot.
    routes: [Option<u32>; SLOTS],
    /// Interned `Allow` header value (union of this leaf's methods).
    allow: u16,
}

impl PathTrie {
    /// Searches `path` (must start with '/') for a route allowing the method in
    /// `slot`. On `Found`, `params` holds the captures; otherwise it is left
    /// as it was on entry (the caller clears it first).
    pub(crate) fn lookup<'p>(
        &self,
        slot: usize,
        path: &'p [u8],
        params: &mut Params<'p>,
    ) -> Outcome {
        if path.first() != Some(&b'/') {
            return Outcome::NotFound;
        }
        let mut walk = Walk {
            trie: self,
            path,
            slot,
            params,
            not_allowed: None,
        };
        match walk.node(0, 1) {
            Some(route) => Outcome::Found(route),
            None => match walk.not_allowed {
                Some(allow) => Outcome::NotAllowed(allow),
                None => Outcome::NotFound,
            },
        }
    }

    /// Number of nodes whose static children are hashed (for tests).
    #[cfg(test)]
    pub(crate) fn hashed_nodes(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.statics, Statics::Hashed(_)))
            .count()
    }
}

/// State of one search. `pos` arguments index the start of the current
/// segment in `path`; `pos == path.len() + 1` means the path is exhausted.
struct Walk<'t, 'p, 'w> {
    trie: &'t PathTrie,
    path: &'p [u8],
    slot: usize,
    params: &'w mut Params<'p>,
    not_allowed: Option<u16>,
}

impl<'p> Walk<'_, 'p, '_> {
    fn node(&mut self, id: u32, pos: usize) -> Option<u32> {
        let trie = self.trie;
        let node = &trie.nodes[id as usize];
        let path = self.path;
        let len = path.len();

        if pos > len {
            if node.leaf != NONE {
                if let Some(route) = self.leaf(node.leaf) {
                    return Some(route);
                }
            }
            if node.catch_all != NONE {
                return self.capture_leaf(node.catch_all, &path[len..]);
            }
            return None;
        }

        let end = path[pos..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(len, |i| pos + i);
        let seg = &path[pos..end];
        let next = if end == len { len + 1 } else { end + 1 };

        if let Some(child) = node.statics.get(seg) {
            if let Some(route) = self.node(child, next) {
                return Some(route);
            }
        }
        if node.param != NONE && !seg.is_empty() {
            let mark = self.params.len();
            if self.params.push(seg) {
                if let Some(route) = self.node(node.param, next) {
                    return Some(route);
                }
            }
            self.params.truncate(mark);
        }
        if node.catch_all != NONE {
            return self.capture_leaf(node.catch_all, &path[pos..]);
        }
        None
    }

    fn capture_leaf(&mut self, leaf: u32, rest: &'p [u8]) -> Option<u32> {
        let mark = self.params.len();
        if self.params.push(rest) {
            if let Some(route) = self.leaf(leaf) {
                return Some(route);
            }
        }
        self.params.truncate(mark);
        None
    }

    #[inline]
    fn leaf(&mut self, id: u32) -> Option<u32> {
        let leaf = &self.trie.leaves[id as usize];
        let route = leaf.routes[self.slot];
        if route.is_none() && self.not_allowed.is_none() {
            self.not_allowed = Some(leaf.allow);
        }
        route
    }
}

/// An existing spec that a new one collides with.
pub(crate) struct Clash {
    /// Index (into the build input) of the spec already in the leaf.
    pub(crate) other_spec: usize,
    /// Standard methods both specs claim.
    pub(crate) overlap: MethodSet,
}

/// Mutable trie used while building; [`TrieBuilder::finish`] freezes it.
pub(crate) struct TrieBuilder {
    nodes: Vec<BuildNode>,
    leaves: Vec<BuildLeaf>,
}

#[derive(Default)]
struct BuildNode {
    statics: FxHashMap<Box<[u8]>, u32>,
    param: Option<u32>,
    catch_all: Option<u32>,
    leaf: Option<u32>,
}

/// Per slot: (route, index of the spec that claimed it).
struct BuildLeaf {
    slots: [Option<(u32, usize)>; SLOTS],
}

impl TrieBuilder {
    pub(crate) fn new() -> Self {
        TrieBuilder {
            nodes: vec![BuildNode::default()],
            leaves: Vec::new(),
        }
    }

    fn new_node(&mut self) -> u32 {
        let id = u32::try_from(self.nodes.len()).expect("route trie exceeds u32::MAX nodes");
        self.nodes.push(BuildNode::default());
        id
    }

    /// Adds a pattern; on a method overlap with a spec already at the same
    /// pattern nothing is inserted and the clashes are returned.
    pub(crate) fn insert(
        &mut self,
        pattern: &Pattern<'_>,
        methods: Option<MethodSet>,
        route: u32,
        spec: usize,
    ) -> Result<(), Vec<Clash>> {
        let mut node = 0usize;
        let mut catch_all = false;
        for seg in &pattern.segments {
            match *seg {
                Segment::Static(text) => {
                    node = match self.nodes[node].statics.get(text.as_bytes()) {
                        Some(&child) => child as usize,
                        None => {
                            let child = self.new_node();
                            self.nodes[node]
                                .statics
                                .insert(Box::from(text.as_bytes()), child);
                            child as usize
                        }
                    };
                }
                Segment::Param(_) => {
                    node = match self.nodes[node].param {
                        Some(child) => child as usize,
                        None => {
                            let child = self.new_node();
                            self.nodes[node].param = Some(child);
                            child as usize
                        }
                    };
                }
                Segment::CatchAll(_) => catch_all = true,
            }
        }

        let link = if catch_all {
            &mut self.nodes[node].catch_all
        } else {
            &mut self.nodes[node].leaf
        };
        let leaf = match *link {
            Some(id) => &mut self.leaves[id as usize],
            None => {
                let id =
                    u32::try_from(self.leaves.len()).expect("route trie exceeds u32::MAX leaves");
                *link = Some(id);
                self.leaves.push(BuildLeaf {
                    slots: [None; SLOTS],
                });
                &mut self.leaves[id as usize]
            }
        };

        let wanted = |slot: usize| match methods {
            None => true,
            Some(set) => slot < Method::VARIANTS.len() && set.contains(Method::VARIANTS[slot]),
        };
        let mut clashes: Vec<Clash> = Vec::new();
        for slot in (0..SLOTS).filter(|&s| wanted(s)) {
            if let Some((_, other)) = leaf.slots[slot] {
                let clash = match clashes.iter_mut().find(|c| c.other_spec == other) {
                    Some(c) => c,
                    None => {
                        clashes.push(Clash {
                            other_spec: other,
                            overlap: MethodSet::empty(),
                        });
                        clashes.last_mut().expect("just pushed")
                    }
                };
                if let Some(&m) = Method::VARIANTS.get(slot) {
                    clash.overlap.insert(m);
                }
            }
        }
        if !clashes.is_empty() {
            return Err(clashes);
        }
        for slot in (0..SLOTS).filter(|&s| wanted(s)) {
            leaf.slots[slot] = Some((route, spec));
        }
        Ok(())
    }

    /// Freezes the trie, interning each leaf's `Allow` value in `allow`.
    pub(crate) fn finish(self, allow: &mut AllowInterner) -> PathTrie {
        let link = |l: Option<u32>| l.unwrap_or(NONE);
        let nodes = self
            .nodes
            .into_iter()
            .map(|n| {
                let statics = match n.statics.len() {
                    0 => Statics::Empty,
                    k if k <= LINEAR_MAX => {
                        let mut v: Vec<(Box<[u8]>, u32)> = n.statics.into_iter().collect();
                        v.sort_unstable();
                        Statics::Linear(v.into_boxed_slice())
                    }
                    _ => Statics::Hashed(n.statics),
                };
                Node {
                    statics,
                    param: link(n.param),
                    catch_all: link(n.catch_all),
                    leaf: link(n.leaf),
                }
            })
            .collect();
        let leaves = self
            .leaves
            .into_iter()
            .map(|l| {
                let mut set = MethodSet::empty();
                for (slot, &m) in Method::VARIANTS.iter().enumerate() {
                    if l.slots[slot].is_some() {
                        set.insert(m);
                    }
                }
                Leaf {
                    routes: l.slots.map(|s| s.map(|(route, _)| route)),
                    allow: allow.intern(set),
                }
            })
            .collect();
        PathTrie { nodes, leaves }
    }
}

/// Shares one `Allow` string per distinct method set across all tries.
#[derive(Default)]
pub(crate) struct AllowInterner {
    ids: FxHashMap<u16, u16>,
    strings: Vec<Box<str>>,
}

impl AllowInterner {
    fn intern(&mut self, set: MethodSet) -> u16 {
        let strings = &mut self.strings;
        *self.ids.entry(set.bits()).or_insert_with(|| {
            // At most 2^9 distinct sets, so this always fits.
            let id = strings.len() as u16;
            strings.push(set.to_string().into_boxed_str());
            id
        })
    }

    /// The interned strings, indexed by the ids handed out.
    pub(crate) fn into_strings(self) -> Box<[Box<str>]> {
        self.strings.into_boxed_slice()
    }
}
