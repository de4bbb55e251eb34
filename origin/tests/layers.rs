//! The origin's layer order, checked.
//!
//! `origin/src` is split into layers (the table [`LAYERS`] below, lowest
//! first), and code imports only downward: a layer may use its own module and
//! the layers below it, never one above it and never a peer of its own rank.
//! That is what lets a change land in one place: a lower layer knows nothing
//! of the ones above, so changing an upper layer cannot reach down into it,
//! and there is one way through the stack rather than a web.
//!
//! The rules:
//! 1. code in a module of rank r may refer to `crate::M` only when M is its own
//!    top-level module or has a rank below r (publication and views, both
//!    rank 3, may not use each other);
//! 2. every top-level module of the crate has a row in [`LAYERS`];
//! 3. inside a layer folder, sibling submodules (files and folders next to
//!    each other; the folder's `mod.rs` is not a sibling) do not import each
//!    other in a cycle. This holds at every depth inside a layer.
//!
//! `lib.rs`, `main.rs` and `src/bin/` are the top and unrestricted.
//!
//! Every file is parsed with `syn`, so comments (doc links included) and
//! strings never count. A reference is any `use` of `crate::`, `self::` or
//! `super::` (grouped, nested, renamed or glob), any such path in a type, an
//! expression, a pattern or a visibility, and any such path inside a macro
//! invocation or a `macro_rules!` body (`$crate::` counts as `crate::`).
//! `super` is resolved from the module the code is in (inline modules
//! included), and names that lib.rs or a module re-exports are followed to
//! the module they come from, so `crate::AppState` is a use of `http`.
//! `#[cfg(test)]` modules count like any other code: a test in a lower layer
//! that reaches up ties that layer to the one above just as much.
//!
//! syn's spans carry no line numbers unless proc-macro2's "span-locations"
//! feature is on, so a violation names the file and the item it is in
//! (`fn`, `impl`, `mod tests`, …) rather than a line.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::Path;

use syn::ext::IdentExt;
use syn::parse::discouraged::Speculative;
use syn::parse::ParseStream;
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{token, Ident, Token, UseTree};

/// One row of the layer table.
struct Layer {
    /// Lower ranks may be used by higher ones, never the other way round.
    rank: u8,
    /// The top-level modules of this rank; several are peers.
    modules: &'static [&'static str],
    /// What the layer holds.
    what: &'static str,
}

/// The layers of `origin/src`, lowest first. Each module is a top-level module
/// of the crate (`src/NAME/mod.rs` or `src/NAME.rs`). Code in a module may use
/// its own module and the modules of lower ranks; modules of one rank are
/// peers and may not use each other. A new top-level module needs a row (or a
/// place in one) here.
const LAYERS: &[Layer] = &[
    Layer {
        rank: 0,
        modules: &["base"],
        what: "pure base: object version, write ops, durability, clock, secrets, background-task contract",
    },
    Layer {
        rank: 1,
        modules: &["storage"],
        what: "object store, faults wrapper, write-ahead log, backlog, flusher",
    },
    Layer {
        rank: 2,
        modules: &["engine", "cluster"],
        what: "peers: partition workers, hot tier, warm load; membership, calls and links between origins",
    },
    Layer {
        rank: 3,
        modules: &["publication", "views"],
        what: "peers: each may use the engine, never each other",
    },
    Layer {
        rank: 4,
        modules: &["http"],
        what: "axum router, error mapping",
    },
    Layer {
        rank: 5,
        modules: &["config"],
        what: "flags, split into per-layer settings",
    },
    Layer {
        rank: 6,
        modules: &["server"],
        what: "start-up and shutdown",
    },
    Layer {
        rank: 7,
        modules: &["tests"],
        what: "in-process tests of the whole origin (test builds only)",
    },
];

/// The rank of a top-level module, if the table places it.
fn rank_of(layers: &[Layer], module: &str) -> Option<u8> {
    layers
        .iter()
        .find(|layer| layer.modules.contains(&module))
        .map(|layer| layer.rank)
}

/// A broken rule.
#[derive(Debug)]
enum Violation {
    /// A file that cannot be read or parsed, so nothing in it was checked.
    Unreadable { file: String, error: String },
    /// Rule 2: a top-level module the table does not place.
    Unplaced {
        module: String,
        at: String,
        ranks: String,
    },
    /// Rule 1: a reference to a module of the same or a higher rank.
    Upward {
        at: String,
        path: String,
        from: String,
        from_rank: u8,
        to: String,
        to_rank: u8,
    },
    /// Rule 1: a reference to a name of the crate root itself (lib.rs), which
    /// is above every layer.
    Root { at: String, path: String },
    /// Rule 3: sibling submodules importing each other in a cycle.
    Cycle {
        folder: String,
        cycle: Vec<String>,
        members: Vec<String>,
        evidence: Vec<String>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unreadable { file, error } => {
                write!(
                    f,
                    "{file}: cannot be read or parsed, so it was not checked: {error}"
                )
            }
            Violation::Unplaced { module, at, ranks } => write!(
                f,
                "`{module}` ({at}) is a top-level module of the crate that the layer table does \
                 not place: place it in LAYERS in origin/tests/layers.rs, or move it into a \
                 layer (ranks now: {ranks})"
            ),
            Violation::Upward {
                at,
                path,
                from,
                from_rank,
                to,
                to_rank,
            } if from_rank == to_rank => write!(
                f,
                "{at}: `{path}`: {from} and {to} are peers (both rank {from_rank}) and may not \
                 use each other"
            ),
            Violation::Upward {
                at,
                path,
                from,
                from_rank,
                to,
                to_rank,
            } => write!(
                f,
                "{at}: `{path}` reaches up: {from} (rank {from_rank}) may use only lower layers, \
                 and {to} is rank {to_rank}"
            ),
            Violation::Root { at, path } => write!(
                f,
                "{at}: `{path}` names the crate root (lib.rs), which is above every layer: name \
                 the module the item lives in"
            ),
            Violation::Cycle {
                folder,
                cycle,
                members,
                evidence,
            } => {
                write!(
                    f,
                    "inside `{folder}`, sibling modules import each other in a cycle: {}",
                    cycle.join(" → ")
                )?;
                if members.len() + 1 > cycle.len() {
                    write!(f, " (all entangled: {})", members.join(", "))?;
                }
                for line in evidence {
                    write!(f, "\n    {line}")?;
                }
                Ok(())
            }
        }
    }
}

/// Every violation of the rules in the crate sources under `root` (the
/// crate's `src`), in a stable order.
fn check(root: &Path, layers: &[Layer]) -> Vec<Violation> {
    let tree = Tree::read(root);
    let mut violations = tree.unreadable;
    violations.extend(unplaced(&tree.modules, layers, root));
    violations.extend(upward(&tree.files, &tree.model, layers));
    violations.extend(cycles(&tree.files, &tree.model));
    violations
}

/// One parsed source file.
struct SourceFile {
    /// The path, for messages.
    file: String,
    /// Its module path from the crate root (empty for lib.rs).
    module: Vec<String>,
    /// The references it makes.
    refs: Vec<Ref>,
}

/// One `crate::`, `self::` or `super::` path, as written.
struct Ref {
    /// The module the code is in, inline modules included.
    module: Vec<String>,
    /// The file and item it is in, for messages.
    at: String,
    /// The path's segments, starting with `crate`, `self` or `super`.
    written: Vec<String>,
    /// Whether it ends in `::*`.
    glob: bool,
}

impl Ref {
    fn path(&self) -> String {
        let path = self.written.join("::");
        if self.glob {
            format!("{path}::*")
        } else {
            path
        }
    }
}

/// The crate's modules and names, for resolving paths.
#[derive(Default)]
struct Model {
    /// Every module: from files, and from `mod` items (declared or inline).
    modules: BTreeSet<Vec<String>>,
    /// The modules that have a file of their own.
    file_modules: BTreeSet<Vec<String>>,
    /// Per module, the names its item-level `use`s bind, with what they were
    /// written as (relative to that module).
    aliases: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
}

impl Model {
    /// `written` (a path written in module `from`) as a path from the crate
    /// root; `None` when it leaves the crate (an external crate, or more
    /// `super`s than there are modules).
    fn absolute(&self, from: &[String], written: &[String], depth: usize) -> Option<Vec<String>> {
        let (first, rest) = written.split_first()?;
        match first.as_str() {
            "crate" => Some(rest.to_vec()),
            "self" | "super" => {
                let mut base = from.to_vec();
                let mut rest = if first == "self" { rest } else { written };
                while let Some((segment, tail)) = rest.split_first() {
                    if segment != "super" {
                        break;
                    }
                    base.pop()?;
                    rest = tail;
                }
                base.extend_from_slice(rest);
                Some(base)
            }
            _ => {
                let mut child = from.to_vec();
                child.push(first.clone());
                if self.modules.contains(&child) {
                    child.extend_from_slice(rest);
                    return Some(child);
                }
                if depth > 8 {
                    return None;
                }
                let target = self.aliases.get(from)?.get(first)?;
                let mut path = self.absolute(from, target, depth + 1)?;
                path.extend_from_slice(rest);
                Some(path)
            }
        }
    }

    /// The module a path from the crate root lands in, following the names
    /// modules import; `None` when it leads out of the crate.
    fn module_of(&self, path: &[String], depth: usize) -> Option<Vec<String>> {
        let mut module = Vec::new();
        for (i, segment) in path.iter().enumerate() {
            let mut next = module.clone();
            next.push(segment.clone());
            if self.modules.contains(&next) {
                module = next;
                continue;
            }
            let alias = self
                .aliases
                .get(&module)
                .and_then(|names| names.get(segment));
            if let (Some(target), true) = (alias, depth < 8) {
                let mut through = self.absolute(&module, target, depth + 1)?;
                through.extend_from_slice(&path[i + 1..]);
                return self.module_of(&through, depth + 1);
            }
            break;
        }
        Some(module)
    }

    /// Where a reference leads: its path from the root and the module it
    /// lands in; `None` when it leaves the crate.
    fn resolve(&self, r: &Ref) -> Option<(Vec<String>, Vec<String>)> {
        let path = self.absolute(&r.module, &r.written, 0)?;
        let module = self.module_of(&path, 0)?;
        Some((path, module))
    }
}

/// The crate sources, read and parsed.
struct Tree {
    files: Vec<SourceFile>,
    model: Model,
    /// The top-level modules, each with the file that holds it, if any.
    modules: BTreeMap<String, Option<String>>,
    unreadable: Vec<Violation>,
}

impl Tree {
    fn read(root: &Path) -> Tree {
        let mut paths = Vec::new();
        let mut unreadable = Vec::new();
        if let Err(error) = rust_files(root, root, &mut paths) {
            unreadable.push(Violation::Unreadable {
                file: root.display().to_string(),
                error: error.to_string(),
            });
        }
        let mut model = Model::default();
        let mut files = Vec::new();
        for rel in paths {
            let Some(module) = module_path(&rel) else {
                continue;
            };
            let file = root.join(&rel).display().to_string();
            let parsed = fs::read_to_string(root.join(&rel))
                .map_err(|e| e.to_string())
                .and_then(|text| syn::parse_file(&text).map_err(|e| e.to_string()));
            let ast = match parsed {
                Ok(ast) => ast,
                Err(error) => {
                    unreadable.push(Violation::Unreadable { file, error });
                    continue;
                }
            };
            let mut collector = Collector::new(file.clone(), module.clone());
            collector.visit_file(&ast);
            for len in 1..=module.len() {
                model.modules.insert(module[..len].to_vec());
            }
            model.file_modules.insert(module.clone());
            model.modules.extend(collector.mods);
            for (in_module, name, written) in collector.aliases {
                model
                    .aliases
                    .entry(in_module)
                    .or_default()
                    .entry(name)
                    .or_insert(written);
            }
            files.push(SourceFile {
                file,
                module,
                refs: collector.refs,
            });
        }
        let mut modules = BTreeMap::new();
        for module in model.modules.iter().filter(|m| m.len() == 1) {
            let file = files
                .iter()
                .find(|f| &f.module == module)
                .map(|f| f.file.clone());
            modules.insert(module[0].clone(), file);
        }
        Tree {
            files,
            model,
            modules,
            unreadable,
        }
    }
}

/// The `.rs` files under `dir`, relative to `root`, sorted; `root/bin` (the
/// binaries) is left out.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    let mut entries = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if path.is_dir() {
            if rel != Path::new("bin") {
                rust_files(root, &path, out)?;
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(rel);
        }
    }
    Ok(())
}

/// The module a file (relative to `src`) holds: `a/b.rs` and `a/b/mod.rs`
/// are `a::b`, lib.rs is the root; `None` for main.rs, the binary.
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let (last, dirs) = parts.split_last()?;
    if dirs.is_empty() {
        match last.as_str() {
            "main.rs" => return None,
            "lib.rs" => return Some(Vec::new()),
            _ => {}
        }
    }
    let mut module = dirs.to_vec();
    if last != "mod.rs" {
        module.push(last.strip_suffix(".rs")?.to_owned());
    }
    Some(module)
}

/// Rule 2: each top-level module has a row.
fn unplaced(
    modules: &BTreeMap<String, Option<String>>,
    layers: &[Layer],
    root: &Path,
) -> Vec<Violation> {
    let ranks = layers
        .iter()
        .map(|l| format!("{} {}", l.rank, l.modules.join(" ")))
        .collect::<Vec<_>>()
        .join(", ");
    modules
        .iter()
        .filter(|(module, _)| rank_of(layers, module).is_none())
        .map(|(module, file)| Violation::Unplaced {
            module: module.clone(),
            at: file.clone().unwrap_or_else(|| {
                format!("declared in {}, no file", root.join("lib.rs").display())
            }),
            ranks: ranks.clone(),
        })
        .collect()
}

/// Rule 1: references go to the own module or to lower ranks.
fn upward(files: &[SourceFile], model: &Model, layers: &[Layer]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for file in files {
        let Some(top) = file.module.first() else {
            continue;
        };
        let Some(from_rank) = rank_of(layers, top) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for r in &file.refs {
            let Some((path, target)) = model.resolve(r) else {
                continue;
            };
            let violation = match target.first() {
                None if !path.is_empty() || r.glob => Violation::Root {
                    at: r.at.clone(),
                    path: r.path(),
                },
                None => continue,
                Some(to) if to == top => continue,
                Some(to) => match rank_of(layers, to) {
                    Some(to_rank) if to_rank >= from_rank => Violation::Upward {
                        at: r.at.clone(),
                        path: r.path(),
                        from: top.clone(),
                        from_rank,
                        to: to.clone(),
                        to_rank,
                    },
                    // Lower, or unplaced (rule 2 names those).
                    _ => continue,
                },
            };
            if seen.insert((r.at.clone(), r.path())) {
                violations.push(violation);
            }
        }
    }
    violations
}

/// Per folder module: sibling → sibling → where that import is written.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Rule 3: sibling submodules do not import each other in a cycle.
fn cycles(files: &[SourceFile], model: &Model) -> Vec<Violation> {
    let mut graphs: BTreeMap<Vec<String>, Graph> = BTreeMap::new();
    for file in files {
        for r in &file.refs {
            let Some((_, target)) = model.resolve(r) else {
                continue;
            };
            let common = r
                .module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == 0 || common >= r.module.len() || common >= target.len() {
                continue;
            }
            let (from, to) = (&r.module[..=common], &target[..=common]);
            if !model.file_modules.contains(from) || !model.file_modules.contains(to) {
                continue;
            }
            graphs
                .entry(r.module[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .entry(to[common].clone())
                .or_insert_with(|| format!("{}: `{}`", r.at, r.path()));
        }
    }
    let mut violations = Vec::new();
    for (folder, graph) in &graphs {
        let name = |node: &str| format!("{}::{node}", folder.join("::"));
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            if done.contains(node) || !reachable(graph, node).contains(node) {
                continue;
            }
            let members: Vec<String> = reachable(graph, node)
                .into_iter()
                .filter(|other| reachable(graph, other).contains(node))
                .collect();
            done.extend(members.iter().cloned());
            let cycle = shortest_cycle(graph, node);
            let evidence = cycle
                .windows(2)
                .map(|pair| {
                    format!(
                        "{} → {}: {}",
                        name(&pair[0]),
                        name(&pair[1]),
                        graph[&pair[0]][&pair[1]]
                    )
                })
                .collect();
            violations.push(Violation::Cycle {
                folder: folder.join("::"),
                cycle: cycle.iter().map(|n| name(n)).collect(),
                members: members.iter().map(|n| name(n)).collect(),
                evidence,
            });
        }
    }
    violations
}

/// The nodes reachable from `start` over one edge or more.
fn reachable(graph: &Graph, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![start.to_owned()];
    while let Some(node) = stack.pop() {
        for next in graph.get(&node).into_iter().flat_map(|edges| edges.keys()) {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

/// A shortest cycle through `start`, as `start, …, start` (`start` is on one).
fn shortest_cycle(graph: &Graph, start: &str) -> Vec<String> {
    let mut previous: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([start.to_owned()]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(&node).into_iter().flat_map(|edges| edges.keys()) {
            if next == start {
                let mut cycle = vec![start.to_owned(), node.clone()];
                let mut at = &node;
                while let Some(before) = previous.get(at) {
                    cycle.push(before.clone());
                    at = before;
                }
                cycle.reverse();
                return cycle;
            }
            if !previous.contains_key(next) {
                previous.insert(next.clone(), node.clone());
                queue.push_back(next.clone());
            }
        }
    }
    vec![start.to_owned()]
}

/// One name a `use` tree (or a path in a macro) brings in.
struct Leaf {
    /// The path, prefix included; for `a::{self}` it is `a`.
    segments: Vec<String>,
    /// The name it binds, if any (not for globs or `as _`).
    bound: Option<String>,
    glob: bool,
}

/// The leaves of a `use` tree under `prefix`.
fn flatten(tree: &UseTree, prefix: Vec<String>, out: &mut Vec<Leaf>) {
    match tree {
        UseTree::Path(path) => {
            let mut next = prefix;
            next.push(path.ident.unraw().to_string());
            flatten(&path.tree, next, out);
        }
        UseTree::Name(name) => out.push(leaf(prefix, &name.ident, None)),
        UseTree::Rename(rename) => out.push(leaf(prefix, &rename.ident, Some(&rename.rename))),
        UseTree::Glob(_) => out.push(Leaf {
            segments: prefix,
            bound: None,
            glob: true,
        }),
        UseTree::Group(group) => {
            for item in &group.items {
                flatten(item, prefix.clone(), out);
            }
        }
    }
}

fn leaf(mut segments: Vec<String>, ident: &Ident, rename: Option<&Ident>) -> Leaf {
    let name = ident.unraw().to_string();
    let is_self = name == "self";
    if !is_self {
        segments.push(name.clone());
    }
    let bound = match rename {
        Some(rename) => Some(rename.unraw().to_string()),
        None if is_self => segments.last().cloned(),
        None => Some(name),
    }
    .filter(|bound| bound != "_");
    Leaf {
        segments,
        bound,
        glob: false,
    }
}

/// The `crate::`/`self::`/`super::` paths in a macro's tokens (which syn
/// leaves unparsed): `crate::a::b`, `$crate::a`, `crate::{a, b::c}`,
/// `crate::a::*`, at any depth of brackets. String literals are single
/// tokens, and comments are not tokens at all.
fn scan_tokens(input: ParseStream, out: &mut Vec<Leaf>) -> syn::Result<()> {
    while !input.is_empty() {
        let head =
            input.peek(Token![crate]) || input.peek(Token![super]) || input.peek(Token![self]);
        if head && input.peek2(Token![::]) {
            let mut segments = vec![Ident::parse_any(input)?.unraw().to_string()];
            let mut done = false;
            // `::` is two tokens, so what follows it is the third.
            while input.peek(Token![::]) && !done {
                if input.peek3(token::Brace) {
                    input.parse::<Token![::]>()?;
                    let content;
                    syn::braced!(content in input);
                    let fork = content.fork();
                    match Punctuated::<UseTree, Token![,]>::parse_terminated(&fork) {
                        Ok(trees) => {
                            content.advance_to(&fork);
                            for tree in &trees {
                                flatten(tree, segments.clone(), out);
                            }
                        }
                        Err(_) => scan_tokens(&content, out)?,
                    }
                    segments.clear();
                    done = true;
                } else if input.peek3(Token![*]) {
                    input.parse::<Token![::]>()?;
                    input.parse::<Token![*]>()?;
                    out.push(Leaf {
                        segments: std::mem::take(&mut segments),
                        bound: None,
                        glob: true,
                    });
                    done = true;
                } else if input.peek3(Ident::peek_any) {
                    input.parse::<Token![::]>()?;
                    segments.push(Ident::parse_any(input)?.unraw().to_string());
                } else {
                    done = true;
                }
            }
            if !segments.is_empty() {
                out.push(Leaf {
                    segments,
                    bound: None,
                    glob: false,
                });
            }
        } else if input.peek(token::Brace) {
            let content;
            syn::braced!(content in input);
            scan_tokens(&content, out)?;
        } else if input.peek(token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            scan_tokens(&content, out)?;
        } else if input.peek(token::Bracket) {
            let content;
            syn::bracketed!(content in input);
            scan_tokens(&content, out)?;
        } else {
            input.step(|cursor| {
                cursor
                    .token_tree()
                    .map(|(_, next)| ((), next))
                    .ok_or_else(|| cursor.error("end of input"))
            })?;
        }
    }
    Ok(())
}

/// Walks one file, collecting its references, modules and imported names.
struct Collector {
    file: String,
    /// The module the walk is in (the file's, then inline modules).
    module: Vec<String>,
    /// The items the walk is in, for messages.
    context: Vec<String>,
    /// How many blocks deep the walk is: `use`s in blocks bind no module names.
    blocks: usize,
    refs: Vec<Ref>,
    mods: Vec<Vec<String>>,
    aliases: Vec<(Vec<String>, String, Vec<String>)>,
}

impl Collector {
    fn new(file: String, module: Vec<String>) -> Collector {
        Collector {
            file,
            module,
            context: Vec::new(),
            blocks: 0,
            refs: Vec::new(),
            mods: Vec::new(),
            aliases: Vec::new(),
        }
    }

    fn record(&mut self, written: Vec<String>, glob: bool) {
        let relative = matches!(
            written.first().map(String::as_str),
            Some("crate" | "self" | "super")
        );
        // A lone `crate`, `self` or `super` (`pub(crate)`, a `self` receiver)
        // names no other module.
        if relative && (written.len() > 1 || glob) {
            let at = if self.context.is_empty() {
                self.file.clone()
            } else {
                format!("{} (in `{}`)", self.file, self.context.join(" › "))
            };
            self.refs.push(Ref {
                module: self.module.clone(),
                at,
                written,
                glob,
            });
        }
    }

    fn within(&mut self, label: Option<String>, walk: impl FnOnce(&mut Self)) {
        let pushed = label.is_some();
        self.context.extend(label);
        walk(self);
        if pushed {
            self.context.pop();
        }
    }
}

/// How an item is named in messages, if it is worth naming.
fn item_label(item: &syn::Item) -> Option<String> {
    let named = |kind: &str, ident: &Ident| Some(format!("{kind} {ident}"));
    match item {
        syn::Item::Fn(i) => named("fn", &i.sig.ident),
        syn::Item::Mod(i) => named("mod", &i.ident),
        syn::Item::Struct(i) => named("struct", &i.ident),
        syn::Item::Enum(i) => named("enum", &i.ident),
        syn::Item::Union(i) => named("union", &i.ident),
        syn::Item::Trait(i) => named("trait", &i.ident),
        syn::Item::Const(i) => named("const", &i.ident),
        syn::Item::Static(i) => named("static", &i.ident),
        syn::Item::Type(i) => named("type", &i.ident),
        syn::Item::Macro(i) => i
            .ident
            .as_ref()
            .and_then(|ident| named("macro_rules!", ident)),
        syn::Item::Impl(i) => {
            let last = |path: &syn::Path| path.segments.last().map(|s| s.ident.to_string());
            let ty = match &*i.self_ty {
                syn::Type::Path(ty) => last(&ty.path),
                _ => None,
            }
            .unwrap_or_else(|| "…".to_owned());
            Some(match i.trait_.as_ref().and_then(|(path, _)| last(path)) {
                Some(tr) => format!("impl {tr} for {ty}"),
                None => format!("impl {ty}"),
            })
        }
        _ => None,
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        self.within(item_label(item), |this| visit::visit_item(this, item));
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        let label = Some(format!("fn {}", f.sig.ident));
        self.within(label, |this| visit::visit_impl_item_fn(this, f));
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        let label = Some(format!("fn {}", f.sig.ident));
        self.within(label, |this| visit::visit_trait_item_fn(this, f));
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let mut path = self.module.clone();
        path.push(m.ident.unraw().to_string());
        self.mods.push(path.clone());
        if m.content.is_some() {
            let outer = std::mem::replace(&mut self.module, path);
            visit::visit_item_mod(self, m);
            self.module = outer;
        } else {
            visit::visit_item_mod(self, m);
        }
    }

    fn visit_block(&mut self, block: &'ast syn::Block) {
        self.blocks += 1;
        visit::visit_block(self, block);
        self.blocks -= 1;
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        flatten(&item.tree, Vec::new(), &mut leaves);
        for leaf in leaves {
            if let (Some(name), 0) = (&leaf.bound, self.blocks) {
                self.aliases
                    .push((self.module.clone(), name.clone(), leaf.segments.clone()));
            }
            self.record(leaf.segments, leaf.glob);
        }
        for attr in &item.attrs {
            self.visit_attribute(attr);
        }
        self.visit_visibility(&item.vis);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let written = path
                .segments
                .iter()
                .map(|s| s.ident.unraw().to_string())
                .collect();
            self.record(written, false);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        let mut found = Vec::new();
        // What does not scan (unbalanced, odd tokens) just ends the scan; what
        // was found before stays.
        let _ = mac.parse_body_with(|input: ParseStream| scan_tokens(input, &mut found));
        for leaf in found {
            self.record(leaf.segments, leaf.glob);
        }
        visit::visit_macro(self, mac);
    }
}

/// The real tree: `origin/src` imports only downward.
#[test]
fn origin_src_keeps_its_layer_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let violations = check(&root, LAYERS);
    let table = LAYERS
        .iter()
        .map(|l| format!("    rank {}: {} ({})", l.rank, l.modules.join(", "), l.what))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        violations.is_empty(),
        "{} layer violation(s) in {}:\n\n{}\n\nThe layers (LAYERS in origin/tests/layers.rs), lowest first:\n{table}\n",
        violations.len(),
        root.display(),
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

/// The table itself: ranks ascend, and no module has two places.
#[test]
fn layer_table_is_ordered_and_unique() {
    assert!(LAYERS.windows(2).all(|pair| pair[0].rank < pair[1].rank));
    let mut seen = BTreeSet::new();
    for layer in LAYERS {
        assert!(
            !layer.modules.is_empty(),
            "rank {} has no module",
            layer.rank
        );
        for module in layer.modules {
            assert!(seen.insert(*module), "`{module}` is in the table twice");
        }
    }
}

mod synthetic {
    //! The checker on small trees written to a temp dir.

    use super::*;

    /// A tree that keeps every rule, with the things that must not count:
    /// doc links and strings naming upper layers, `pub(crate)`, `self`
    /// receivers, `$crate` in a macro, a sibling import one way only, a use
    /// of a re-export of lib.rs, binaries that use anything.
    const CLEAN: &[(&str, &str)] = &[
        (
            "lib.rs",
            "//! Synthetic.\n\
             pub mod base;\npub mod config;\npub mod engine;\npub mod http;\n\
             pub mod publication;\npub mod server;\npub mod storage;\npub mod views;\n\
             pub use http::{app, AppState};\npub use server::Origin;\n",
        ),
        ("main.rs", "use synthetic::server::Origin;\nfn main() { let _ = crate::x::y(); }\n"),
        ("bin/token.rs", "fn main() { crate::server::run(); }\n"),
        (
            "base/mod.rs",
            "//! Links like [`crate::http::app`] are harmless, and so is \"crate::server::run\".\n\
             pub mod clock;\npub mod object;\npub use object::Object;\n\
             /* crate::engine::Entry in a block comment */\n\
             macro_rules! stamp { () => { $crate::base::clock::now() }; }\n\
             pub(crate) use stamp;\n",
        ),
        ("base/clock.rs", "pub fn now() -> u64 { 0 }\npub(super) fn tick() {}\n"),
        (
            "base/object.rs",
            "use super::clock;\npub struct Object { pub at: u64 }\n\
             impl Object { pub fn new() -> Self { Self { at: clock::now() } } \
             pub(crate) fn at(&self) -> u64 { self.at } }\n",
        ),
        (
            "storage/mod.rs",
            "pub mod backlog;\npub mod faults;\npub mod wal;\npub use wal::Wal;\n\
             use crate::base::{clock, Object};\n\
             pub fn made() -> Object { let _ = clock::now(); Object::new() }\n",
        ),
        (
            "storage/wal.rs",
            "use super::backlog::Backlog;\nuse crate::base::{self, object::{Object}};\n\
             // crate::engine::Entry in a comment\n\
             pub struct Wal(pub Backlog, pub Object);\n\
             pub fn stamp() -> u64 { crate::base::stamp!() + base::clock::now() }\n",
        ),
        (
            "storage/backlog.rs",
            "pub struct Backlog;\n\
             pub fn now() -> u64 { super::super::base::clock::now() }\n\
             #[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::base::Object;\n\
             #[test]\n    fn t() { let s = \"use crate::engine::Entry;\"; \
             assert_eq!(now(), 0, \"{}\", s); let _ = Object::new(); }\n}\n",
        ),
        ("storage/faults.rs", "pub fn drops_pushes(_: &u8) -> bool { false }\n"),
        (
            "engine/mod.rs",
            "pub mod hot;\nuse crate::storage::{self, Wal};\n\
             pub struct Entry(pub crate::base::Object);\n\
             pub fn clock_micros() -> u64 { storage::backlog::now() }\n\
             impl Entry { pub(crate) fn wal(&self) -> Option<Wal> { None } }\n",
        ),
        (
            "engine/hot.rs",
            "use super::Entry;\npub struct Hot(pub Vec<Entry>);\n\
             pub fn check() { assert!(!crate::storage::faults::drops_pushes(&0)); }\n",
        ),
        (
            "publication/mod.rs",
            "use crate::engine::{self, hot::Hot};\n\
             pub fn push(h: &Hot) -> bool { \
             crate::storage::faults::drops_pushes(&0) && engine::clock_micros() > 0 && h.0.is_empty() }\n",
        ),
        (
            "views/mod.rs",
            "mod state;\npub use state::View;\n\
             pub fn derive(e: crate::engine::Entry) -> View { View(e) }\n",
        ),
        ("views/state.rs", "pub struct View(pub crate::engine::Entry);\n"),
        (
            "http/mod.rs",
            "pub mod error;\npub struct AppState;\npub fn app() {}\n\
             pub fn serve() { let _ = crate::publication::push; let _ = crate::views::derive; }\n",
        ),
        ("http/error.rs", "pub enum Error { Query(crate::views::View) }\n"),
        ("config.rs", "use crate::http::AppState;\npub struct Config(pub AppState);\n"),
        (
            "server.rs",
            "use crate::{config::Config, AppState};\npub struct Origin(pub Config, pub AppState);\n",
        ),
    ];

    /// The violations, as messages, of `CLEAN` with `changes` (a path with
    /// text replaces the file or adds it).
    fn violations(changes: &[(&str, &str)]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let root = dir.path().join("src");
        let mut files: BTreeMap<&str, &str> = CLEAN.iter().copied().collect();
        files.extend(changes.iter().copied());
        for (path, text) in files {
            let path = root.join(path);
            let parent = path.parent().unwrap_or(&root);
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
            fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        check(&root, LAYERS)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The one violation of `CLEAN` with `changes`, checked to name each of
    /// `parts`.
    fn one_violation(changes: &[(&str, &str)], parts: &[&str]) -> String {
        let found = violations(changes);
        assert_eq!(
            found.len(),
            1,
            "want one violation of {changes:#?}, got {found:#?}"
        );
        for part in parts {
            assert!(
                found[0].contains(part),
                "{:?} does not name {part:?}",
                found[0]
            );
        }
        found[0].clone()
    }

    #[test]
    fn clean_tree_passes() {
        let found = violations(&[]);
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn upward_import_names_file_path_and_both_layers() {
        let wal = "use super::backlog::Backlog;\nuse crate::engine::Entry;\npub struct Wal(pub Backlog);\n";
        let message = one_violation(
            &[("storage/wal.rs", wal)],
            &[
                "storage/wal.rs",
                "`crate::engine::Entry`",
                "storage (rank 1)",
                "engine is rank 2",
            ],
        );
        assert!(message.contains("reaches up"), "{message}");
    }

    #[test]
    fn upward_import_in_any_spelling_fails() {
        let cases = [
            (
                "use crate::{base::clock, engine::{hot::{Hot}}};",
                "crate::engine::hot::Hot",
            ),
            (
                "use super::super::engine::Entry as E;",
                "super::super::engine::Entry",
            ),
            ("use crate::engine;", "crate::engine"),
            ("use crate::engine::*;", "crate::engine::*"),
            ("pub use crate::http::AppState;", "crate::http::AppState"),
        ];
        for (line, path) in cases {
            let faults = format!("{line}\npub fn drops_pushes(_: &u8) -> bool {{ false }}\n");
            one_violation(
                &[("storage/faults.rs", &faults)],
                &["storage/faults.rs", path, "storage (rank 1)"],
            );
        }
    }

    #[test]
    fn re_export_of_lib_rs_is_followed_to_its_layer() {
        let hot = "pub struct Hot(pub crate::AppState);\n";
        one_violation(
            &[("engine/hot.rs", hot)],
            &[
                "engine/hot.rs",
                "`crate::AppState`",
                "engine (rank 2)",
                "http is rank 4",
            ],
        );
    }

    #[test]
    fn glob_of_the_crate_root_fails() {
        let hot = "use crate::*;\npub struct Hot;\n";
        one_violation(
            &[("engine/hot.rs", hot)],
            &["engine/hot.rs", "`crate::*`", "crate root"],
        );
    }

    #[test]
    fn peer_import_fails() {
        let publication = "use crate::views::View;\npub fn push(_: &View) -> bool { true }\n";
        one_violation(
            &[("publication/mod.rs", publication)],
            &[
                "publication/mod.rs",
                "`crate::views::View`",
                "publication and views are peers",
                "rank 3",
            ],
        );
        let views = "pub fn derive() -> bool { crate::publication::push(todo()) }\nfn todo<T>() -> T { loop {} }\n";
        one_violation(
            &[
                ("views/mod.rs", views),
                ("views/state.rs", "pub struct View;\n"),
            ],
            &["views/mod.rs", "views and publication are peers"],
        );
    }

    #[test]
    fn expression_path_upward_fails() {
        let faults = "pub fn drops_pushes(_: &u8) -> bool { crate::engine::clock_micros() > 0 }\n";
        one_violation(
            &[("storage/faults.rs", faults)],
            &[
                "storage/faults.rs (in `fn drops_pushes`)",
                "`crate::engine::clock_micros`",
                "storage (rank 1)",
                "engine is rank 2",
            ],
        );
    }

    #[test]
    fn paths_in_macros_and_types_and_tests_count() {
        let cases = [
            "pub fn f() { assert!(crate::engine::clock_micros() > 0, \"x\"); }",
            "pub fn f() { let _ = vec![(1, crate::engine::Entry::new)]; }",
            "pub fn f() -> Option<Vec<crate::engine::Entry>> { None }",
            "impl Backlog { fn f(&self) { let _ = <crate::engine::Entry as Clone>::clone; } }",
            "#[cfg(test)]\nmod tests { use crate::engine::Entry; }",
            "#[cfg(test)]\nmod tests { mod deeper { use super::super::super::super::engine::Entry; } }",
        ];
        for case in cases {
            let backlog = format!("pub struct Backlog;\npub fn now() -> u64 {{ 0 }}\n{case}\n");
            one_violation(
                &[("storage/backlog.rs", &backlog)],
                &[
                    "storage/backlog.rs",
                    "engine::",
                    "storage (rank 1)",
                    "engine is rank 2",
                ],
            );
        }
    }

    #[test]
    fn unknown_top_level_module_fails() {
        let lib = format!("{}pub mod metrics;\npub mod api;\n", CLEAN[0].1);
        let found = violations(&[("lib.rs", &lib), ("metrics.rs", "pub fn scrape() {}\n")]);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("`api` (declared in"), "{}", found[0]);
        assert!(
            found[1].contains("`metrics`") && found[1].contains("metrics.rs"),
            "{}",
            found[1]
        );
        for message in &found {
            assert!(message.contains("place it in LAYERS"), "{message}");
        }
        // A folder with a mod.rs is a top-level module too, declared or not.
        one_violation(
            &[("metrics/mod.rs", "pub fn scrape() {}\n")],
            &["`metrics`", "metrics/mod.rs", "LAYERS"],
        );
    }

    #[test]
    fn sibling_cycle_fails() {
        let backlog = "pub struct Backlog;\npub fn now() -> u64 { 0 }\n\
                       pub fn wal() -> Option<super::wal::Wal> { None }\n";
        let message = one_violation(
            &[("storage/backlog.rs", backlog)],
            &[
                "inside `storage`",
                "cycle: storage::backlog → storage::wal → storage::backlog",
                "storage/backlog.rs (in `fn wal`): `super::wal::Wal`",
                "storage/wal.rs: `super::backlog::Backlog`",
            ],
        );
        assert_eq!(message.lines().count(), 3, "{message}");
    }

    #[test]
    fn sibling_cycle_through_a_re_export_of_mod_rs_fails() {
        // `super::Wal` is storage/mod.rs's `pub use wal::Wal`, so storage::wal.
        let backlog = "pub struct Backlog;\npub fn now() -> u64 { 0 }\n\
                       #[cfg(test)]\nmod tests { use crate::storage::Wal; }\n";
        one_violation(
            &[("storage/backlog.rs", backlog)],
            &[
                "storage::backlog → storage::wal → storage::backlog",
                "(in `mod tests`): `crate::storage::Wal`",
            ],
        );
    }

    #[test]
    fn longer_sibling_cycle_is_reported_once() {
        let changes = [
            (
                "storage/wal.rs",
                "pub struct Wal(pub super::backlog::Backlog);\n",
            ),
            (
                "storage/backlog.rs",
                "pub struct Backlog;\npub fn now() -> u64 { super::faults::f() }\n",
            ),
            (
                "storage/faults.rs",
                "pub fn f() -> u64 { let _: Option<super::Wal> = None; 0 }\n",
            ),
        ];
        one_violation(
            &changes,
            &["storage::backlog → storage::faults → storage::wal → storage::backlog"],
        );
    }

    #[test]
    fn unparsable_file_is_reported() {
        one_violation(
            &[("storage/faults.rs", "pub fn f( {\n")],
            &["storage/faults.rs", "cannot be read or parsed"],
        );
    }
}
