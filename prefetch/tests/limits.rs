//! Property tests of the query limit checker ([`ringside_prefetch::limits::parse_and_check`]) on
//! generated and adversarial query texts: nesting, fragments (unknown, cyclic, spread from
//! everywhere), aliases and list arguments. The checker never panics, never visits more than
//! its budget, and accepts only what an independent, naive expansion finds within the limits.
#![allow(clippy::unwrap_used)]

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use proptest::prelude::*;
use ringside_prefetch::PrefetchError;
use ringside_prefetch::limits::{QueryLimits, cost_and_visits, parse_and_check, text_nesting};

/// Small limits, so that generated documents land on both sides of every one.
const LIMITS: QueryLimits = QueryLimits {
    max_depth: 5,
    max_fields: 40,
    max_aliases: 4,
    max_nesting: 10,
    max_visits: 80,
    max_list_items: 3,
};

/// A GraphQL input value: ints, lists and objects, nested.
fn value() -> impl Strategy<Value = String> {
    (0..100i32)
        .prop_map(|n| n.to_string())
        .prop_recursive(6, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(", "))),
                prop::collection::vec(inner, 0..3).prop_map(|fields| {
                    let fields: Vec<String> = fields
                        .iter()
                        .enumerate()
                        .map(|(i, v)| format!("k{i}: {v}"))
                        .collect();
                    format!("{{{}}}", fields.join(" "))
                }),
            ]
        })
}

/// A leaf field: maybe aliased, maybe with an argument.
fn leaf() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["a", "b", "c"]),
        prop::option::of(prop::sample::select(vec!["x", "y", "z"])),
        prop::option::of(value()),
    )
        .prop_map(|(name, alias, argument)| {
            let alias = alias.map(|a| format!("{a}: ")).unwrap_or_default();
            let argument = argument.map(|v| format!("(v: {v})")).unwrap_or_default();
            format!("{alias}{name}{argument}")
        })
}

/// A spread of F0..F6; only F0..F4 are ever defined.
fn spread() -> impl Strategy<Value = String> {
    (0..7usize).prop_map(|n| format!("...F{n}"))
}

/// A selection set's contents: leaves, spreads, sub-selections and inline fragments.
fn selections() -> impl Strategy<Value = String> {
    let item = prop_oneof![3 => leaf(), 2 => spread()];
    prop::collection::vec(item, 1..4)
        .prop_map(|items| items.join(" "))
        .prop_recursive(8, 64, 4, |inner| {
            prop::collection::vec(
                prop_oneof![
                    2 => leaf(),
                    2 => spread(),
                    2 => (leaf(), inner.clone()).prop_map(|(field, set)| format!("{field} {{ {set} }}")),
                    1 => inner.prop_map(|set| format!("... on T {{ {set} }}")),
                ],
                1..4,
            )
            .prop_map(|items| items.join(" "))
        })
}

/// An operation and up to five fragments, each spreading any other (or itself).
fn document() -> impl Strategy<Value = String> {
    (selections(), prop::collection::vec(selections(), 0..5)).prop_map(|(operation, fragments)| {
        let mut text = format!("query {{ {operation} }}");
        for (n, body) in fragments.iter().enumerate() {
            text.push_str(&format!(" fragment F{n} on T {{ {body} }}"));
        }
        text
    })
}

/// Text made of GraphQL's structural characters: brackets, quotes, comments, spreads.
fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            "(",
            ")",
            "\"",
            "\"\"\"",
            "\\",
            "#",
            "\n",
            "...",
            "a",
            "F0",
            " ",
            ":",
            "$v",
            "fragment F0 on T",
            "query",
            "on",
        ]),
        0..400,
    )
    .prop_map(|parts| parts.concat())
}

/// The cost of `set` by plain expansion, every fragment expanded wherever it is spread; `None`
/// past `budget` selections (so it stays cheap) or on a missing fragment or a cycle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Expanded {
    selections: usize,
    aliases: usize,
    depth: usize,
}

fn expand(
    document: &ExecutableDocument,
    set: &SelectionSet,
    stack: &mut Vec<String>,
    budget: &mut usize,
) -> Option<Expanded> {
    let mut cost = Expanded {
        depth: 1,
        ..Expanded::default()
    };
    for selection in &set.items {
        *budget = budget.checked_sub(1)?;
        cost.selections += 1;
        let inner = match &selection.node {
            Selection::Field(field) => {
                if field.node.alias.is_some() {
                    cost.aliases += 1;
                }
                if field.node.selection_set.node.items.is_empty() {
                    continue;
                }
                let mut below = expand(document, &field.node.selection_set.node, stack, budget)?;
                below.depth += 1;
                below
            }
            Selection::InlineFragment(fragment) => {
                expand(document, &fragment.node.selection_set.node, stack, budget)?
            }
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.to_string();
                if stack.contains(&name) {
                    return None;
                }
                let fragment = document.fragments.get(&spread.node.fragment_name.node)?;
                stack.push(name);
                let inner = expand(document, &fragment.node.selection_set.node, stack, budget);
                stack.pop();
                inner?
            }
        };
        cost.selections += inner.selections;
        cost.aliases += inner.aliases;
        cost.depth = cost.depth.max(inner.depth);
    }
    Some(cost)
}

fn check_properties(text: &str) -> Result<(), TestCaseError> {
    let result = parse_and_check(text, &LIMITS);
    let Ok(document) = async_graphql::parser::parse_query(text) else {
        return Ok(());
    };
    let Some(nesting) = text_nesting(text) else {
        // An unclosed block string, which the parser may read as an empty string and code.
        let refused = matches!(result, Err(PrefetchError::ParseFailed(_)));
        prop_assert!(refused, "an unclosed block string, yet {:?}", result.err());
        return Ok(());
    };
    if nesting > LIMITS.max_nesting {
        let refused = matches!(result, Err(PrefetchError::NestedTooDeeply { .. }));
        prop_assert!(refused, "nested past the limit, yet {:?}", result.err());
        return Ok(());
    }
    let (walked, visits) = cost_and_visits(&document, &LIMITS);
    prop_assert!(visits <= LIMITS.max_visits + 1, "visited {visits}");
    prop_assert_eq!(walked.is_ok(), result.is_ok());
    if let Ok(cost) = walked {
        prop_assert!(cost.selections <= LIMITS.max_fields);
        prop_assert!(cost.aliases <= LIMITS.max_aliases);
        prop_assert!(cost.depth <= LIMITS.max_depth);
        prop_assert!(cost.visits <= LIMITS.max_visits);
        // Every operation, expanded the slow way, is within the limits, and the worst one
        // costs what the walk said.
        let mut worst = Expanded::default();
        for (_name, operation) in document.operations.iter() {
            let mut budget = 10 * LIMITS.max_fields;
            let expanded = expand(
                &document,
                &operation.node.selection_set.node,
                &mut Vec::new(),
                &mut budget,
            );
            prop_assert!(expanded.is_some(), "accepted, but not expandable: {text}");
            let expanded = expanded.unwrap();
            worst.selections = worst.selections.max(expanded.selections);
            worst.aliases = worst.aliases.max(expanded.aliases);
            worst.depth = worst.depth.max(expanded.depth);
        }
        prop_assert_eq!(
            (worst.selections, worst.aliases, worst.depth),
            (cost.selections, cost.aliases, cost.depth)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_documents_are_costed_exactly_and_within_budget(text in document()) {
        check_properties(&text)?;
    }

    #[test]
    fn structural_soup_never_panics_and_stays_within_budget(text in soup()) {
        check_properties(&text)?;
    }

    #[test]
    fn any_text_never_panics(text in ".{0,2000}") {
        let _ = parse_and_check(&text, &LIMITS);
        let _ = parse_and_check(&text, &QueryLimits::default());
    }
}
