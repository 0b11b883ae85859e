//! Query limits, checked on the parsed document before anything executes: nesting depth,
//! number of fields (with fragments expanded wherever they are spread, so a small query cannot
//! fan out into a huge one) and number of aliases.

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

use crate::PrefetchError;

#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_depth: usize,
    pub max_fields: usize,
    pub max_aliases: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_depth: 12,
            max_fields: 600,
            max_aliases: 30,
        }
    }
}

struct Walk<'a> {
    document: &'a ExecutableDocument,
    limits: QueryLimits,
    fields: usize,
    aliases: usize,
    /// Fragments being expanded, to refuse cycles.
    expanding: Vec<&'a str>,
}

impl<'a> Walk<'a> {
    fn selection_set(&mut self, set: &'a SelectionSet, depth: usize) -> Result<(), PrefetchError> {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    self.fields += 1;
                    if field.alias.is_some() {
                        self.aliases += 1;
                    }
                    if self.fields > self.limits.max_fields {
                        return Err(PrefetchError::TooComplex {
                            max: self.limits.max_fields,
                        });
                    }
                    if self.aliases > self.limits.max_aliases {
                        return Err(PrefetchError::TooManyAliases {
                            max: self.limits.max_aliases,
                        });
                    }
                    if !field.selection_set.node.items.is_empty() {
                        if depth + 1 > self.limits.max_depth {
                            return Err(PrefetchError::TooDeep {
                                max: self.limits.max_depth,
                            });
                        }
                        self.selection_set(&field.selection_set.node, depth + 1)?;
                    }
                }
                Selection::InlineFragment(fragment) => {
                    self.selection_set(&fragment.node.selection_set.node, depth)?;
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if self.expanding.contains(&name) {
                        return Err(PrefetchError::BadRequest(format!(
                            "fragment {name} spreads itself"
                        )));
                    }
                    let Some(fragment) =
                        self.document.fragments.get(&spread.node.fragment_name.node)
                    else {
                        // Unknown fragments are reported by validation, with their position.
                        continue;
                    };
                    self.expanding.push(name);
                    self.selection_set(&fragment.node.selection_set.node, depth)?;
                    self.expanding.pop();
                }
            }
        }
        Ok(())
    }
}

/// Checks every operation of `document` against `limits`.
pub fn check(document: &ExecutableDocument, limits: QueryLimits) -> Result<(), PrefetchError> {
    for (_name, operation) in document.operations.iter() {
        let mut walk = Walk {
            document,
            limits,
            fields: 0,
            aliases: 0,
            expanding: Vec::new(),
        };
        walk.selection_set(&operation.node.selection_set.node, 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(query: &str) -> Result<(), PrefetchError> {
        let document = async_graphql::parser::parse_query(query).expect("parses");
        check(
            &document,
            QueryLimits {
                max_depth: 4,
                max_fields: 20,
                max_aliases: 2,
            },
        )
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
}
