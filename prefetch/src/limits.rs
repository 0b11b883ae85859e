//! Query limits, checked before anything executes. [`parse_and_check`] is the single entry
//! every query text goes through (the HTTP handler and the fuzz target):
//!
//! 1. [`text_nesting`] scans the raw text for bracket nesting (`{`, `[`, `(`: selection sets,
//!    list and object values, argument lists), outside strings and comments, in one pass and
//!    without recursion. The parser recurses once per level of an input value and has no limit
//!    on that, so a few KB of `[[[…]]]` would overflow a worker's stack and abort the process;
//!    the scan refuses such text before the parser sees it.
//! 2. The parser builds the document.
//! 3. A walk of the document counts selections (fields, fragment spreads and inline fragments,
//!    with fragments counted wherever they are spread, so a small query cannot fan out into a
//!    huge one), aliases and selection depth. Each fragment's cost is computed once and reused
//!    wherever it is spread (the spreads form a DAG), so the walk's own work is linear in the
//!    document, and is capped anyway by [`QueryLimits::max_visits`]. Unknown fragments and
//!    cycles are refused during the walk.
//!
//! [`json_nesting`] does for request bodies and `variables` what [`text_nesting`] does for
//! query text.

use std::collections::HashMap;

use async_graphql::Name;
use async_graphql::parser::Positioned;
use async_graphql::parser::types::{Directive, ExecutableDocument, Selection, SelectionSet};

use crate::PrefetchError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Deepest selection nesting, fragments counted where spread. Default 12: the full
    /// prefetch query needs 8.
    pub max_depth: usize,
    /// Most selections (fields, fragment spreads, inline fragments) in the query with every
    /// fragment expanded where it is spread. Default 600: the full prefetch query selects about
    /// 60, so ten of them fit.
    pub max_fields: usize,
    /// Most aliased fields, fragments expanded. Default 30: aliases are how one request asks
    /// for the same expensive field many times.
    pub max_aliases: usize,
    /// Deepest nesting of brackets in the raw query text (selection sets, lists and objects
    /// in arguments and variable defaults, argument lists), of a JSON request body and of
    /// `variables`, and of fragments spread inside fragments. Default 32: room for
    /// [`Self::max_depth`] levels of selections plus an argument list and a list value at the
    /// deepest one, far below where the parser's recursion could exhaust a worker's stack.
    pub max_nesting: usize,
    /// Most selections the checker itself visits per document (each fragment's body once,
    /// however often it is spread). Default 2,400: a single operation within
    /// [`Self::max_fields`] never needs more than `max_fields` visits; the rest is room for
    /// documents that carry several operations. Bounds the checker's work on any text.
    pub max_visits: usize,
    /// Longest list value in arguments, directives, variable defaults and `variables`.
    /// Default 16: the schema's only list argument (`artwork(sizes:)`) has 4 meaningful
    /// values, and the executor parses an argument again for every item of every list it is
    /// under, so one long list costs its length times every card.
    pub max_list_items: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_depth: 12,
            max_fields: 600,
            max_aliases: 30,
            max_nesting: 32,
            max_visits: 2_400,
            max_list_items: 16,
        }
    }
}

/// A limit setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid prefetch setting {field}: {problem}")]
pub struct LimitsError {
    pub field: &'static str,
    pub problem: &'static str,
}

/// Largest nesting accepted as a setting: the parser recurses once per level, and a worker
/// stack holds a few hundred levels comfortably, not thousands.
pub const MAX_NESTING_CEILING: usize = 128;

impl QueryLimits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        let fail = |field, problem| Err(LimitsError { field, problem });
        if self.max_depth == 0 || self.max_fields == 0 || self.max_nesting == 0 {
            return fail(
                "query limits",
                "max_depth, max_fields and max_nesting must be >= 1",
            );
        }
        if self.max_nesting > MAX_NESTING_CEILING {
            return fail("max_nesting", "must be at most 128");
        }
        if self.max_depth > self.max_nesting {
            return fail("max_depth", "must be at most max_nesting");
        }
        if self.max_list_items == 0 || self.max_list_items > 10_000 {
            return fail("max_list_items", "must be between 1 and 10,000");
        }
        if self.max_visits < self.max_fields {
            return fail("max_visits", "must be at least max_fields");
        }
        Ok(())
    }
}

/// What an accepted document costs, for its most expensive operation; `visits` is the
/// checker's own work over the whole document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryCost {
    pub selections: usize,
    pub aliases: usize,
    pub depth: usize,
    pub visits: usize,
}

/// The single entry for untrusted query text: raw-text nesting scan, parse, then the walk.
pub fn parse_and_check(
    query: &str,
    limits: &QueryLimits,
) -> Result<ExecutableDocument, PrefetchError> {
    let Some(nesting) = text_nesting(query) else {
        return Err(PrefetchError::ParseFailed(
            "a block string (\"\"\") is never closed".into(),
        ));
    };
    if nesting > limits.max_nesting {
        return Err(PrefetchError::NestedTooDeeply {
            max: limits.max_nesting,
        });
    }
    let document = async_graphql::parser::parse_query(query).map_err(|error| {
        // The parser's message can quote the query: keep the answer short.
        PrefetchError::ParseFailed(error.to_string().chars().take(300).collect())
    })?;
    cost(&document, limits)?;
    Ok(document)
}

/// Deepest bracket nesting (`{`, `[`, `(`) of GraphQL text outside strings, block strings and
/// comments. Unbalanced closers never go below zero; the parser reports them.
///
/// `None` when a block string is never closed: the parser then reads its opening `"""` as an
/// empty string `""` and parses the rest as code, so no count of the rest as string text would
/// be true. Such text is refused before it reaches the parser.
pub fn text_nesting(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0usize);
    while at < bytes.len() {
        match bytes[at] {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'#' => {
                while at < bytes.len() && bytes[at] != b'\n' && bytes[at] != b'\r' {
                    at += 1;
                }
            }
            b'"' if bytes[at..].starts_with(b"\"\"\"") => {
                // Block string: ends at the next `"""` not escaped as `\"""`.
                at += 3;
                let mut closed = false;
                while at < bytes.len() {
                    if bytes[at..].starts_with(b"\\\"\"\"") {
                        at += 4;
                    } else if bytes[at..].starts_with(b"\"\"\"") {
                        at += 2;
                        closed = true;
                        break;
                    } else {
                        at += 1;
                    }
                }
                if !closed {
                    return None;
                }
            }
            b'"' => at = skip_quoted(bytes, at),
            _ => {}
        }
        at += 1;
    }
    Some(deepest)
}

/// Deepest nesting of `{` and `[` in JSON text outside strings (the payload check's scan).
pub use ringside_protocol::json_nesting;

/// From the opening quote at `at`, the index of the closing quote (or the end), skipping
/// backslash escapes. Strings end at a line break too (GraphQL), which JSON never has inside.
fn skip_quoted(bytes: &[u8], mut at: usize) -> usize {
    at += 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' | b'\n' | b'\r' => return at,
            _ => at += 1,
        }
    }
    at
}

/// Refuses argument values holding a list longer than [`QueryLimits::max_list_items`]. Values
/// are looked at as JSON (a variable stands in as its name: its own value is checked by
/// [`check_variables`]); the nesting scan that ran first bounds their depth.
fn check_argument_lists<V: serde::Serialize>(
    arguments: &[(Positioned<Name>, Positioned<V>)],
    limits: &QueryLimits,
) -> Result<(), PrefetchError> {
    arguments
        .iter()
        .try_for_each(|(_, value)| check_value_lists(&value.node, limits))
}

fn check_value_lists(
    value: &impl serde::Serialize,
    limits: &QueryLimits,
) -> Result<(), PrefetchError> {
    let json = serde_json::to_value(value).map_err(|_| PrefetchError::Internal)?;
    check_variables(&json, limits)
}

fn check_directives(
    directives: &[Positioned<Directive>],
    limits: &QueryLimits,
) -> Result<(), PrefetchError> {
    directives
        .iter()
        .try_for_each(|directive| check_argument_lists(&directive.node.arguments, limits))
}

/// Refuses `variables` (JSON, already within the nesting limit) holding a list longer than
/// [`QueryLimits::max_list_items`].
pub fn check_variables(
    variables: &serde_json::Value,
    limits: &QueryLimits,
) -> Result<(), PrefetchError> {
    let max = limits.max_list_items;
    match variables {
        serde_json::Value::Array(items) => {
            if items.len() > max {
                return Err(PrefetchError::ListTooLong { max });
            }
            items
                .iter()
                .try_for_each(|item| check_variables(item, limits))
        }
        serde_json::Value::Object(fields) => fields
            .values()
            .try_for_each(|field| check_variables(field, limits)),
        _ => Ok(()),
    }
}

/// A selection set's cost, independent of where it appears.
#[derive(Debug, Clone, Copy, Default)]
struct SetCost {
    selections: usize,
    aliases: usize,
    /// Levels of selection sets, this one included.
    depth: usize,
}

impl SetCost {
    fn add(&mut self, other: SetCost) {
        self.selections = self.selections.saturating_add(other.selections);
        self.aliases = self.aliases.saturating_add(other.aliases);
        self.depth = self.depth.max(other.depth);
    }
}

enum FragmentCost {
    /// On the walk's stack: spreading it again is a cycle.
    Expanding,
    Done(SetCost),
}

struct Walk<'a> {
    document: &'a ExecutableDocument,
    limits: &'a QueryLimits,
    fragments: HashMap<&'a str, FragmentCost>,
    visits: usize,
}

/// Names quoted in messages, shortened: a name can be as long as the request.
fn quoted_name(name: &str) -> String {
    name.chars().take(64).collect()
}

impl<'a> Walk<'a> {
    fn check_cost(&self, cost: &SetCost) -> Result<(), PrefetchError> {
        if cost.selections > self.limits.max_fields {
            return Err(PrefetchError::TooComplex {
                max: self.limits.max_fields,
            });
        }
        if cost.aliases > self.limits.max_aliases {
            return Err(PrefetchError::TooManyAliases {
                max: self.limits.max_aliases,
            });
        }
        if cost.depth > self.limits.max_depth {
            return Err(PrefetchError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        Ok(())
    }

    /// The cost of `set`. `nesting` counts the selection sets and fragments the walk is inside,
    /// which bounds its recursion.
    fn selection_set(
        &mut self,
        set: &'a SelectionSet,
        nesting: usize,
    ) -> Result<SetCost, PrefetchError> {
        if nesting > self.limits.max_nesting {
            return Err(PrefetchError::NestedTooDeeply {
                max: self.limits.max_nesting,
            });
        }
        let mut cost = SetCost {
            depth: 1,
            ..SetCost::default()
        };
        for selection in &set.items {
            self.visits += 1;
            if self.visits > self.limits.max_visits {
                return Err(PrefetchError::TooComplex {
                    max: self.limits.max_fields,
                });
            }
            cost.selections = cost.selections.saturating_add(1);
            match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    check_argument_lists(&field.arguments, self.limits)?;
                    check_directives(&field.directives, self.limits)?;
                    if field.alias.is_some() {
                        cost.aliases = cost.aliases.saturating_add(1);
                    }
                    if !field.selection_set.node.items.is_empty() {
                        let mut below =
                            self.selection_set(&field.selection_set.node, nesting + 1)?;
                        below.depth = below.depth.saturating_add(1);
                        cost.add(below);
                    }
                }
                Selection::InlineFragment(fragment) => {
                    check_directives(&fragment.node.directives, self.limits)?;
                    let inner =
                        self.selection_set(&fragment.node.selection_set.node, nesting + 1)?;
                    cost.add(inner);
                }
                Selection::FragmentSpread(spread) => {
                    check_directives(&spread.node.directives, self.limits)?;
                    let inner = self.fragment(spread.node.fragment_name.node.as_str(), nesting)?;
                    cost.add(inner);
                }
            }
            self.check_cost(&cost)?;
        }
        Ok(cost)
    }

    /// The cost of the fragment `name`, computed on its first spread and reused afterwards.
    fn fragment(&mut self, name: &'a str, nesting: usize) -> Result<SetCost, PrefetchError> {
        match self.fragments.get(name) {
            Some(FragmentCost::Done(cost)) => return Ok(*cost),
            Some(FragmentCost::Expanding) => {
                return Err(PrefetchError::BadRequest(format!(
                    "fragment {} spreads itself",
                    quoted_name(name)
                )));
            }
            None => {}
        }
        let Some((key, fragment)) = self.document.fragments.get_key_value(name) else {
            return Err(PrefetchError::UnknownFragment(quoted_name(name)));
        };
        self.fragments.insert(key.as_str(), FragmentCost::Expanding);
        let cost = self.selection_set(&fragment.node.selection_set.node, nesting + 1)?;
        self.fragments
            .insert(key.as_str(), FragmentCost::Done(cost));
        Ok(cost)
    }
}

/// Walks every operation of `document`; the cost of the most expensive one, or the first
/// limit it breaks.
pub fn cost(
    document: &ExecutableDocument,
    limits: &QueryLimits,
) -> Result<QueryCost, PrefetchError> {
    cost_and_visits(document, limits).0
}

/// [`cost`], and the selections the walk visited whatever its outcome (for tests that bound
/// the checker's own work).
pub fn cost_and_visits(
    document: &ExecutableDocument,
    limits: &QueryLimits,
) -> (Result<QueryCost, PrefetchError>, usize) {
    let mut walk = Walk {
        document,
        limits,
        fragments: HashMap::new(),
        visits: 0,
    };
    let result = walk_operations(&mut walk);
    (result, walk.visits)
}

fn walk_operations(walk: &mut Walk<'_>) -> Result<QueryCost, PrefetchError> {
    let (document, limits) = (walk.document, walk.limits);
    let mut worst = QueryCost::default();
    for (_name, operation) in document.operations.iter() {
        check_directives(&operation.node.directives, limits)?;
        for definition in &operation.node.variable_definitions {
            if let Some(default) = &definition.node.default_value {
                check_value_lists(&default.node, limits)?;
            }
            check_directives(&definition.node.directives, limits)?;
        }
        let cost = walk.selection_set(&operation.node.selection_set.node, 1)?;
        worst.selections = worst.selections.max(cost.selections);
        worst.aliases = worst.aliases.max(cost.aliases);
        worst.depth = worst.depth.max(cost.depth);
    }
    // A fragment no operation spreads is refused by validation, but validation's rules recurse
    // through its spreads before they say so: its chain and lists are bounded here first.
    for (name, _fragment) in document.fragments.iter() {
        walk.fragment(name.as_str(), 1)?;
    }
    worst.visits = walk.visits;
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: QueryLimits = QueryLimits {
        max_depth: 4,
        max_fields: 20,
        max_aliases: 2,
        max_nesting: 8,
        max_visits: 40,
        max_list_items: 3,
    };

    fn check_text(query: &str) -> Result<(), PrefetchError> {
        parse_and_check(query, &SMALL).map(|_| ())
    }

    #[test]
    fn limits_depth_fields_and_aliases() {
        assert!(check_text("{ a { b { c } } }").is_ok());
        assert!(matches!(
            check_text("{ a { b { c { d { e } } } } }"),
            Err(PrefetchError::TooDeep { .. })
        ));
        assert!(matches!(
            check_text("{ x: a y: a z: a }"),
            Err(PrefetchError::TooManyAliases { .. })
        ));
        let wide = format!(
            "{{ {} }}",
            (0..21)
                .map(|i| format!("f{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert!(matches!(
            check_text(&wide),
            Err(PrefetchError::TooComplex { .. })
        ));
    }

    #[test]
    fn fragments_count_where_they_are_spread() {
        let bomb = "query { a { ...F } b { ...F } c { ...F } } fragment F on T { x y z w v u t }";
        assert!(matches!(
            check_text(bomb),
            Err(PrefetchError::TooComplex { .. })
        ));
        let deep = "query { a { ...F } } fragment F on T { b { c { d { e } } } }";
        assert!(matches!(
            check_text(deep),
            Err(PrefetchError::TooDeep { .. })
        ));
        let cycle = "query { a { ...F } } fragment F on T { b { ...F } }";
        assert!(matches!(
            check_text(cycle),
            Err(PrefetchError::BadRequest(_))
        ));
    }

    /// `fragment Fn { ...Fn+1 ...Fn+1 }`: 2^32 expanded spreads in about 1.5 KB.
    fn fragment_bomb(levels: usize, last: &str) -> String {
        let mut text = String::from("query{prefetch{...F0}}");
        for n in 0..levels {
            text.push_str(&format!(
                " fragment F{n} on Prefetch{{...F{m} ...F{m}}}",
                m = n + 1
            ));
        }
        text.push_str(&format!(" fragment F{levels} on Prefetch{{{last}}}"));
        text
    }

    #[test]
    fn a_fragment_bomb_is_costed_once_per_fragment() {
        // The default nesting refuses a chain of 32 fragments outright; with room for it, the
        // walk still costs each fragment once.
        assert!(matches!(
            parse_and_check(&fragment_bomb(31, "...Missing"), &QueryLimits::default()),
            Err(PrefetchError::NestedTooDeeply { .. })
        ));
        let limits = QueryLimits {
            max_nesting: 64,
            ..QueryLimits::default()
        };
        let missing = fragment_bomb(31, "...Missing");
        let started = std::time::Instant::now();
        assert!(matches!(
            parse_and_check(&missing, &limits),
            Err(PrefetchError::UnknownFragment(name)) if name == "Missing"
        ));
        let fields = fragment_bomb(31, "profileId");
        assert!(matches!(
            parse_and_check(&fields, &limits),
            Err(PrefetchError::TooComplex { .. })
        ));
        // Linear work: milliseconds; the pathology was minutes to hours.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn spreads_of_empty_fragments_count() {
        let text = format!(
            "{{ a {{ {} }} }} fragment E on T {{ ... on T {{ x }} }}",
            "...E ".repeat(8)
        );
        // 1 + 8 spreads, each an inline fragment and a field: 25 > 20.
        assert!(matches!(
            check_text(&text),
            Err(PrefetchError::TooComplex { .. })
        ));
    }

    #[test]
    fn raw_nesting_is_refused_before_parsing() {
        let lists = format!(
            "{{ event(id: {}3{}) {{ id }} }}",
            "[".repeat(3000),
            "]".repeat(3000)
        );
        assert!(matches!(
            parse_and_check(&lists, &QueryLimits::default()),
            Err(PrefetchError::NestedTooDeeply { max: 32 })
        ));
        let objects = format!(
            "{{ event(id: {}1{}) {{ id }} }}",
            "{a:".repeat(3000),
            "}".repeat(3000)
        );
        assert!(matches!(
            parse_and_check(&objects, &QueryLimits::default()),
            Err(PrefetchError::NestedTooDeeply { .. })
        ));
        let selections = format!("{}{}", "{ a ".repeat(100), "}".repeat(100));
        assert!(matches!(
            parse_and_check(&selections, &QueryLimits::default()),
            Err(PrefetchError::NestedTooDeeply { .. })
        ));
        // Brackets in strings, block strings and comments do not count.
        let quoted = format!(
            "{{ a(x: \"{o}\\\"{o}\", y: \"\"\"{o}\\\"\"\"{o}\"\"\") # {o}\n}}",
            o = "[".repeat(50)
        );
        assert_eq!(text_nesting(&quoted), Some(2));
    }

    #[test]
    fn fragments_no_operation_spreads_are_bounded_too() {
        let chain: String = (0..200)
            .map(|i| format!("fragment a{i} on Query {{ ...a{} }} ", i + 1))
            .collect();
        let query = format!("query {{ x }} {chain} fragment a200 on Query {{ x }}");
        assert!(matches!(
            check_text(&query),
            Err(PrefetchError::NestedTooDeeply { .. })
        ));
    }

    #[test]
    fn an_unterminated_block_string_cannot_hide_nesting() {
        // The parser falls back from an unterminated `"""` to an empty `""` and parses what
        // follows as code: a scan that took the rest for string text let 30,000 nested lists
        // reach the recursive parser and overflow the worker's stack.
        let hidden = format!(
            "{{ f(a: [\"\"\"\" {}{}]) {{ id }} }}",
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        assert!(matches!(
            parse_and_check(&hidden, &QueryLimits::default()),
            Err(PrefetchError::ParseFailed(_))
        ));
        assert_eq!(text_nesting("{ f(a: \"\"\"open) }"), None);
        assert_eq!(text_nesting("{ f(a: \"\"\"closed [[[\"\"\") }"), Some(2));
    }

    #[test]
    fn chains_of_fragments_are_bounded() {
        let mut text = String::from("{ ...F0 }");
        for n in 0..20 {
            text.push_str(&format!(" fragment F{n} on T {{ ...F{} }}", n + 1));
        }
        text.push_str(" fragment F20 on T { x }");
        assert!(matches!(
            check_text(&text),
            Err(PrefetchError::NestedTooDeeply { .. })
        ));
    }

    #[test]
    fn long_lists_are_refused_wherever_they_are() {
        assert!(check_text("{ a(x: [1, 2, 3]) }").is_ok());
        for text in [
            "{ a(x: [1, 2, 3, 4]) }",
            "{ a(x: { y: [[1, 2, 3, 4]] }) }",
            "{ a(x: [$v, $v, $v, $v]) }",
            "{ a @d(x: [1, 2, 3, 4]) }",
            "query($v: [Int] = [1, 2, 3, 4]) { a }",
            "{ ...F } fragment F on T { a(x: [1, 2, 3, 4]) }",
        ] {
            assert!(
                matches!(check_text(text), Err(PrefetchError::ListTooLong { max: 3 })),
                "{text}"
            );
        }
        let variables = serde_json::json!({ "v": [[1, 2, 3, 4]] });
        assert!(matches!(
            check_variables(&variables, &SMALL),
            Err(PrefetchError::ListTooLong { max: 3 })
        ));
    }

    #[test]
    fn json_nesting_skips_strings() {
        assert_eq!(json_nesting(br#"{"a":[{"b":"[[[{{"}]}"#), 3);
        assert_eq!(json_nesting(br#"{"a":"\"[[["}"#), 1);
    }
}
