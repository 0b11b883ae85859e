//! The materializer: for one profile and one event, the ranked rows of every stage.
//!
//! Each event has a candidate pool (its related titles, the most popular titles overall and the
//! most popular of every genre). For each stage, candidates are scored from the profile's taste
//! (genre affinities), the title's popularity and its relation to the event, with weights that
//! depend on the stage: before and during the event, titles related to it lead; after it, taste
//! does. Rows are filled in a fixed order and a title appears at most once per stage page, and
//! the genre rows use distinct genres, so the page stays diverse. Titles above the profile's
//! maturity limit and titles it watched recently are left out.
//!
//! A page is stored as a compact binary blob (pool indexes as `u16`), the same bytes in memory
//! and in Redis; its fingerprint ties it to the event and catalog it was computed from, so a
//! changed event is recomputed and an unchanged one is left alone.

use std::collections::HashSet;

use crate::catalog::{Catalog, GENRES, GenreSet, Maturity, ProfileEntry};

/// Titles per row.
pub const ROW_LENGTH: usize = 8;
/// Blob format version.
const BLOB_VERSION: u8 = 2;
/// The blob's "no title" position (pools hold at most `u16::MAX` titles, positions below it).
const NO_TITLE: u16 = u16::MAX;

/// What a row is, for its heading and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, async_graphql::Enum)]
pub enum RowKind {
    /// Titles related to the event, ranked for this profile and stage.
    Event,
    /// More titles around the event, for the event page.
    Related,
    /// The profile's best matches overall.
    TopPicks,
    /// One of the profile's favourite genres.
    Genre,
    /// Titles like one the profile watched recently.
    BecauseYouWatched,
    /// The most popular titles now.
    Trending,
}

impl RowKind {
    fn code(self) -> u8 {
        match self {
            Self::Event => 0,
            Self::Related => 1,
            Self::TopPicks => 2,
            Self::Genre => 3,
            Self::BecauseYouWatched => 4,
            Self::Trending => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Event,
            1 => Self::Related,
            2 => Self::TopPicks,
            3 => Self::Genre,
            4 => Self::BecauseYouWatched,
            5 => Self::Trending,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: RowKind,
    /// Genre index or title index, depending on the kind; 0 otherwise.
    pub param: u32,
    /// Title indexes into the catalog, best first.
    pub titles: Vec<u32>,
}

/// One stage's content for one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePage {
    /// The stage's position in the event's stage list.
    pub stage: usize,
    /// `None` only when the profile may see no title at all.
    pub billboard: Option<u32>,
    /// Home rows, then the event page's rows (`Event` and `Related`).
    pub rows: Vec<Row>,
}

/// Every stage's content of one event for one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub fingerprint: u64,
    pub stages: Vec<StagePage>,
}

/// The event as the materializer sees it: its stages and what relates to it.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub id: String,
    pub stages: Vec<String>,
    pub related: Vec<u32>,
    pub genres: GenreSet,
}

impl EventSpec {
    /// The catalog's relations for `id`, or none for an event the catalog does not know.
    pub fn from_catalog(catalog: &Catalog, id: &str, stages: Vec<String>) -> Self {
        match catalog.event(id) {
            Some(entry) => Self {
                id: id.to_owned(),
                stages,
                related: entry.related.to_vec(),
                genres: entry.genres,
            },
            None => Self {
                id: id.to_owned(),
                stages,
                related: Vec::new(),
                genres: GenreSet::default(),
            },
        }
    }
}

/// Stage weights: (taste, popularity, relation). While the event is live, what everyone is
/// watching leads; before it, a balance that helps a viewer get ready; after it, the viewer's
/// own taste leads and the event matters less.
fn stage_weights(stage: &str, index: usize, count: usize) -> (f32, f32, f32) {
    match stage {
        "LIVE" => (0.1, 0.9, 0.9),
        _ if index + 1 == count && count > 1 => (0.9, 0.1, 0.3),
        _ if index == 0 => (0.5, 0.5, 0.7),
        _ => (0.3, 0.7, 0.8),
    }
}

/// An event's candidates and what scoring needs of each, computed once per event.
#[derive(Debug)]
pub struct EventPool {
    pub spec: EventSpec,
    pub fingerprint: u64,
    /// Catalog title indexes; a page refers to titles by position here.
    pub titles: Vec<u32>,
    positions: std::collections::HashMap<u32, u16>,
    related: Vec<bool>,
    popularity: Vec<f32>,
}

const POPULAR_OVERALL: usize = 200;
const POPULAR_PER_GENRE: usize = 60;

impl EventPool {
    pub fn new(catalog: &Catalog, spec: EventSpec) -> Self {
        let by_popularity = &catalog.by_popularity;
        let mut chosen: Vec<u32> = Vec::new();
        let mut seen = HashSet::new();
        let mut add = |title: u32, chosen: &mut Vec<u32>| {
            if seen.insert(title) {
                chosen.push(title);
            }
        };
        for &title in &spec.related {
            add(title, &mut chosen);
        }
        for &title in by_popularity.iter().take(POPULAR_OVERALL) {
            add(title, &mut chosen);
        }
        for genre in 0..GENRES.len() {
            for &title in by_popularity
                .iter()
                .filter(|&&t| catalog.titles[t as usize].genres.contains(genre))
                .take(POPULAR_PER_GENRE)
            {
                add(title, &mut chosen);
            }
        }
        chosen.truncate(NO_TITLE as usize);
        let related_set: HashSet<u32> = spec.related.iter().copied().collect();
        let max_popularity = chosen
            .iter()
            .map(|&t| catalog.titles[t as usize].title.popularity)
            .fold(f32::MIN_POSITIVE, f32::max);
        // A stable hash (FNV-1a) of everything a page depends on, so a page is recomputed when
        // any of it changes and nodes of one deployment agree whatever their build.
        let mut fingerprint = Fnv::new();
        fingerprint.write(spec.id.as_bytes());
        for stage in &spec.stages {
            fingerprint.write(stage.as_bytes());
        }
        fingerprint.write(&catalog.content_hash().to_le_bytes());
        for &title in &chosen {
            fingerprint.write(&title.to_le_bytes());
        }
        let fingerprint = fingerprint.finish();
        Self {
            positions: chosen
                .iter()
                .enumerate()
                .map(|(p, &t)| (t, p as u16))
                .collect(),
            related: chosen.iter().map(|t| related_set.contains(t)).collect(),
            popularity: chosen
                .iter()
                .map(|&t| catalog.titles[t as usize].title.popularity / max_popularity)
                .collect(),
            titles: chosen,
            fingerprint,
            spec,
        }
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike `DefaultHasher`.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// Keeps the best `n` (score, candidate) pairs seen.
struct TopN {
    n: usize,
    best: Vec<(f32, u16)>,
}

impl TopN {
    fn new(n: usize) -> Self {
        Self {
            n,
            best: Vec::with_capacity(n + 1),
        }
    }

    fn offer(&mut self, score: f32, candidate: u16) {
        if self.best.len() == self.n && self.best.last().is_some_and(|&(worst, _)| score <= worst) {
            return;
        }
        let at = self.best.partition_point(|&(s, _)| s >= score);
        self.best.insert(at, (score, candidate));
        self.best.truncate(self.n);
    }
}

/// How deep each ranked list goes: enough to fill a row after every earlier row of the same
/// stage page took its titles.
const RANK_DEPTH: usize = ROW_LENGTH * 8;

/// The best `depth` eligible candidates by `score`, best first.
fn ranked(
    candidates: usize,
    eligible: &[bool],
    depth: usize,
    score: impl Fn(usize) -> Option<f32>,
) -> Vec<u16> {
    let mut top = TopN::new(depth);
    for candidate in (0..candidates).filter(|&c| eligible[c]) {
        if let Some(s) = score(candidate) {
            top.offer(s, candidate as u16);
        }
    }
    top.best.into_iter().map(|(_, c)| c).collect()
}

/// The first `n` of `ranking` not used yet on this stage page; marks them used.
fn take_unused(ranking: &[u16], n: usize, used: &mut Vec<u16>) -> Vec<u32> {
    let picked: Vec<u16> = ranking
        .iter()
        .copied()
        .filter(|c| !used.contains(c))
        .take(n)
        .collect();
    used.extend_from_slice(&picked);
    picked.into_iter().map(u32::from).collect()
}

/// Computes the page of `profile` (or of a cold-start visitor, `None`) for an event.
///
/// Rankings that do not depend on the stage (top picks, genre rows, trending) are computed once
/// per profile; each stage then takes from them the titles its earlier rows left.
pub fn materialize(catalog: &Catalog, pool: &EventPool, profile: Option<&ProfileEntry>) -> Page {
    let neutral = [128u8; GENRES.len()];
    let affinities = profile.map_or(&neutral, |p| &p.affinities);
    let limit = profile.map_or(Maturity::Age13, |p| p.maturity_limit);
    let recent: &[u32] = profile.map_or(&[], |p| &p.recent);
    let candidates = pool.titles.len();
    let genres_of = |c: usize| catalog.titles[pool.titles[c] as usize].genres;

    let eligible: Vec<bool> = pool
        .titles
        .iter()
        .map(|&t| catalog.titles[t as usize].title.maturity <= limit && !recent.contains(&t))
        .collect();
    let taste: Vec<f32> = (0..candidates)
        .map(|c| {
            let genres = genres_of(c);
            let total: u32 = genres.iter().map(|g| u32::from(affinities[g])).sum();
            total as f32 / (255.0 * genres.len().max(1) as f32)
        })
        .collect();
    let mut favourites: Vec<usize> = (0..GENRES.len()).filter(|&g| affinities[g] > 0).collect();
    favourites.sort_by_key(|&g| std::cmp::Reverse(affinities[g]));

    let top_picks = ranked(candidates, &eligible, RANK_DEPTH, |c| {
        Some(0.7 * taste[c] + 0.3 * pool.popularity[c])
    });
    let trending = ranked(candidates, &eligible, RANK_DEPTH, |c| {
        Some(pool.popularity[c])
    });
    let genre_row = |genre: usize| {
        let titles = ranked(candidates, &eligible, RANK_DEPTH, |c| {
            genres_of(c)
                .contains(genre)
                .then(|| 0.4 * taste[c] + 0.6 * pool.popularity[c])
        });
        (RowKind::Genre, genre as u32, titles)
    };
    // Personal rows: the favourite genre, then "because you watched" the last title (or the
    // second favourite genre when there is no recent watch).
    let mut personal = Vec::with_capacity(2);
    if let Some(&first) = favourites.first() {
        personal.push(genre_row(first));
    }
    match recent.first() {
        Some(&watched) => {
            let like = catalog.titles[watched as usize].genres;
            let titles = ranked(candidates, &eligible, RANK_DEPTH, |c| {
                genres_of(c)
                    .overlaps(like)
                    .then(|| 0.5 * taste[c] + 0.5 * pool.popularity[c])
            });
            personal.push((RowKind::BecauseYouWatched, watched, titles));
        }
        None => personal.extend(favourites.get(1).map(|&g| genre_row(g))),
    }

    let has_related = pool.related.iter().any(|&r| r);
    let stage_count = pool.spec.stages.len();
    let stages = pool
        .spec
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| {
            let (w_taste, w_pop, w_rel) = stage_weights(stage, index, stage_count);
            // The event's own ranking depends on the stage: related titles only, or (for an
            // event the catalog relates nothing to) everything, weighted by genre overlap.
            let event_ranking = ranked(candidates, &eligible, RANK_DEPTH, |c| {
                let relation = if pool.related[c] {
                    1.0
                } else if has_related {
                    return None;
                } else if genres_of(c).overlaps(pool.spec.genres) {
                    0.3
                } else {
                    0.0
                };
                Some(w_taste * taste[c] + w_pop * pool.popularity[c] + w_rel * relation)
            });
            let mut used: Vec<u16> = Vec::with_capacity(ROW_LENGTH * 7 + 1);
            // The billboard is the event's best title for this profile, else its best match
            // overall: always a title the profile may see.
            let billboard = [&event_ranking, &top_picks, &trending]
                .into_iter()
                .find_map(|ranking| take_unused(ranking, 1, &mut used).first().copied());
            let mut rows = Vec::with_capacity(6);
            rows.push(Row {
                kind: RowKind::Event,
                param: 0,
                titles: take_unused(&event_ranking, ROW_LENGTH, &mut used),
            });
            rows.push(Row {
                kind: RowKind::TopPicks,
                param: 0,
                titles: take_unused(&top_picks, ROW_LENGTH, &mut used),
            });
            for (kind, param, ranking) in &personal {
                rows.push(Row {
                    kind: *kind,
                    param: *param,
                    titles: take_unused(ranking, ROW_LENGTH, &mut used),
                });
            }
            rows.push(Row {
                kind: RowKind::Trending,
                param: 0,
                titles: take_unused(&trending, ROW_LENGTH, &mut used),
            });
            rows.push(Row {
                kind: RowKind::Related,
                param: 0,
                titles: take_unused(&event_ranking, ROW_LENGTH, &mut used),
            });
            StagePage {
                stage: index,
                billboard,
                rows,
            }
        })
        .collect();
    let mut page = Page {
        fingerprint: pool.fingerprint,
        stages,
    };
    // Rows were picked as pool positions; pages hold catalog indexes.
    for stage in &mut page.stages {
        stage.billboard = stage.billboard.map(|b| pool.titles[b as usize]);
        for row in &mut stage.rows {
            for title in &mut row.titles {
                *title = pool.titles[*title as usize];
            }
        }
    }
    page
}

/// Why a blob could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed materialized page")]
pub struct BlobError;

/// Encodes a page with titles as positions in `pool`.
pub fn encode(page: &Page, pool: &EventPool) -> Vec<u8> {
    let position = |title: u32| -> u16 { pool.positions.get(&title).copied().unwrap_or(0) };
    let mut out = Vec::with_capacity(16 + page.stages.len() * 120);
    out.push(BLOB_VERSION);
    out.extend_from_slice(&page.fingerprint.to_le_bytes());
    out.push(page.stages.len() as u8);
    for stage in &page.stages {
        out.push(stage.stage as u8);
        out.extend_from_slice(&stage.billboard.map_or(NO_TITLE, position).to_le_bytes());
        out.push(stage.rows.len() as u8);
        for row in &stage.rows {
            out.push(row.kind.code());
            out.extend_from_slice(&row.param.to_le_bytes());
            out.push(row.titles.len() as u8);
            for &title in &row.titles {
                out.extend_from_slice(&position(title).to_le_bytes());
            }
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, BlobError> {
        let (&first, rest) = self.bytes.split_first().ok_or(BlobError)?;
        self.bytes = rest;
        Ok(first)
    }

    fn u16(&mut self) -> Result<u16, BlobError> {
        Ok(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Result<u32, BlobError> {
        Ok(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    fn u64(&mut self) -> Result<u64, BlobError> {
        let mut bytes = [0u8; 8];
        for byte in &mut bytes {
            *byte = self.u8()?;
        }
        Ok(u64::from_le_bytes(bytes))
    }
}

/// The fingerprint a blob was written for, read without decoding the rest.
pub fn fingerprint_of(bytes: &[u8]) -> Option<u64> {
    let header: [u8; 8] = bytes.get(1..9)?.try_into().ok()?;
    (bytes.first() == Some(&BLOB_VERSION)).then(|| u64::from_le_bytes(header))
}

/// Decodes a blob written by [`encode`] for the same pool.
pub fn decode(bytes: &[u8], pool: &EventPool) -> Result<Page, BlobError> {
    let mut reader = Reader { bytes };
    if reader.u8()? != BLOB_VERSION {
        return Err(BlobError);
    }
    let title = |position: u16| pool.titles.get(position as usize).copied().ok_or(BlobError);
    let fingerprint = reader.u64()?;
    let stage_count = reader.u8()?;
    let mut stages = Vec::with_capacity(stage_count as usize);
    for _ in 0..stage_count {
        let stage = reader.u8()? as usize;
        let billboard = match reader.u16()? {
            NO_TITLE => None,
            position => Some(title(position)?),
        };
        let row_count = reader.u8()?;
        let mut rows = Vec::with_capacity(row_count as usize);
        for _ in 0..row_count {
            let kind = RowKind::from_code(reader.u8()?).ok_or(BlobError)?;
            let param = reader.u32()?;
            let len = reader.u8()?;
            let titles = (0..len)
                .map(|_| title(reader.u16()?))
                .collect::<Result<_, _>>()?;
            rows.push(Row {
                kind,
                param,
                titles,
            });
        }
        stages.push(StagePage {
            stage,
            billboard,
            rows,
        });
    }
    if !reader.bytes.is_empty() {
        return Err(BlobError);
    }
    Ok(Page {
        fingerprint,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{DatasetSize, generate};

    fn catalog() -> Catalog {
        let dataset = generate(DatasetSize {
            titles: 3_000,
            profiles: 200,
            seed: 11,
        });
        Catalog::build(dataset.titles, dataset.profiles, dataset.events).expect("catalog")
    }

    fn pool(catalog: &Catalog, id: &str) -> EventPool {
        let stages = catalog.event(id).expect("event").content.stages.clone();
        EventPool::new(catalog, EventSpec::from_catalog(catalog, id, stages))
    }

    #[test]
    fn pages_are_diverse_personal_and_stage_specific() {
        let catalog = catalog();
        let pool = pool(&catalog, "fight-night");
        let profile = &catalog.profiles[5];
        let page = materialize(&catalog, &pool, Some(profile));
        assert_eq!(page.stages.len(), 3);
        for stage in &page.stages {
            let mut all: Vec<u32> = stage.rows.iter().flat_map(|r| r.titles.clone()).collect();
            all.extend(stage.billboard);
            let distinct: HashSet<u32> = all.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                all.len(),
                "a title appears once per stage page"
            );
            for &title in &all {
                assert!(catalog.titles[title as usize].title.maturity <= profile.maturity_limit);
                assert!(
                    !profile.recent.contains(&title),
                    "recently watched titles are left out"
                );
            }
            let event_row = &stage.rows[0];
            assert_eq!(event_row.kind, RowKind::Event);
            assert!(
                event_row
                    .titles
                    .iter()
                    .all(|t| pool.spec.related.contains(t))
            );
            assert_eq!(event_row.titles.len(), ROW_LENGTH);
        }
        // A viewer who likes one of the event's genres and not the other: live, popularity
        // leads the event row; afterwards, taste does.
        let mut fan = profile.clone();
        fan.affinities = [0; GENRES.len()];
        fan.affinities[GENRES.iter().position(|g| *g == "Action").expect("genre")] = 255;
        let fan_page = materialize(&catalog, &pool, Some(&fan));
        assert_ne!(
            fan_page.stages[1].rows[0], fan_page.stages[2].rows[0],
            "stages rank differently"
        );
        let other = materialize(&catalog, &pool, Some(&catalog.profiles[6]));
        assert_ne!(page, other, "profiles get their own pages");
    }

    #[test]
    fn taste_moves_titles_up() {
        let catalog = catalog();
        let pool = pool(&catalog, "season-premiere");
        let mut lover = catalog.profiles[0].clone();
        lover.affinities = [0; GENRES.len()];
        let horror = GENRES.iter().position(|g| *g == "Horror").expect("genre");
        lover.affinities[horror] = 255;
        lover.recent = Box::new([]);
        let page = materialize(&catalog, &pool, Some(&lover));
        let picks = &page.stages[2].rows[1];
        assert_eq!(picks.kind, RowKind::TopPicks);
        let horror_share = picks
            .titles
            .iter()
            .filter(|&&t| catalog.titles[t as usize].genres.contains(horror))
            .count();
        assert!(
            horror_share >= ROW_LENGTH / 2,
            "{horror_share} of {ROW_LENGTH}"
        );
    }

    #[test]
    fn a_profile_that_may_see_no_related_title_still_gets_an_eligible_billboard() {
        let mut dataset = generate(DatasetSize {
            titles: 600,
            profiles: 10,
            seed: 4,
        });
        let related: HashSet<String> = dataset.events[0].related_titles.iter().cloned().collect();
        for title in &mut dataset.titles {
            if related.contains(&title.id) {
                title.maturity = Maturity::Age18;
            }
        }
        let catalog =
            Catalog::build(dataset.titles, dataset.profiles, dataset.events).expect("catalog");
        let pool = pool(&catalog, "fight-night");
        let mut kid = catalog.profiles[0].clone();
        kid.maturity_limit = Maturity::Age7;
        let page = materialize(&catalog, &pool, Some(&kid));
        for stage in &page.stages {
            let billboard = stage.billboard.expect("some title is suitable");
            assert!(catalog.titles[billboard as usize].title.maturity <= Maturity::Age7);
            assert!(
                stage
                    .rows
                    .iter()
                    .flat_map(|r| &r.titles)
                    .all(|&t| catalog.titles[t as usize].title.maturity <= Maturity::Age7)
            );
        }
    }

    #[test]
    fn large_row_parameters_survive_the_blob() {
        let catalog = catalog();
        let pool = pool(&catalog, "fight-night");
        let mut page = materialize(&catalog, &pool, Some(&catalog.profiles[1]));
        page.stages[0].rows[3].param = 70_000;
        assert_eq!(
            decode(&encode(&page, &pool), &pool)
                .expect("decodes")
                .stages[0]
                .rows[3]
                .param,
            70_000
        );
    }

    #[test]
    fn blobs_round_trip_and_stay_small() {
        let catalog = catalog();
        let pool = pool(&catalog, "awards-gala");
        let page = materialize(&catalog, &pool, Some(&catalog.profiles[9]));
        let blob = encode(&page, &pool);
        assert!(blob.len() < 600, "{} bytes", blob.len());
        assert_eq!(decode(&blob, &pool), Ok(page));
        assert_eq!(decode(&blob[..blob.len() - 1], &pool), Err(BlobError));
        assert_eq!(decode(&[9, 9, 9], &pool), Err(BlobError));
    }
}
