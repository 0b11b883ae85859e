//! The content a prefetch is built from: titles, profiles (tastes) and the events titles
//! relate to. Loaded from JSON lines or produced by [`crate::generate`]; immutable once built,
//! shared by every request through an `Arc`.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The genres a title can have and a profile can like.
pub const GENRES: [&str; 20] = [
    "Action",
    "Comedy",
    "Drama",
    "Documentary",
    "Sports",
    "Thriller",
    "Romance",
    "SciFi",
    "Horror",
    "Animation",
    "Crime",
    "Fantasy",
    "Family",
    "Music",
    "Reality",
    "Mystery",
    "History",
    "War",
    "Western",
    "Kids",
];

/// A set of genres, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GenreSet(pub(crate) u32);

impl GenreSet {
    pub fn insert(&mut self, genre: usize) {
        self.0 |= 1 << genre;
    }

    pub fn contains(self, genre: usize) -> bool {
        self.0 & (1 << genre) != 0
    }

    pub fn overlaps(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..GENRES.len()).filter(move |&g| self.contains(g))
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn from_names(names: &[String], line: usize) -> Result<Self, CatalogError> {
        let mut set = Self::default();
        for name in names {
            let genre = GENRES
                .iter()
                .position(|g| g.eq_ignore_ascii_case(name))
                .ok_or_else(|| CatalogError::Invalid {
                    line,
                    message: format!("unknown genre {name:?}"),
                })?;
            set.insert(genre);
        }
        Ok(set)
    }
}

/// Age rating, from least to most restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Maturity {
    #[serde(rename = "ALL")]
    All,
    #[serde(rename = "7+")]
    Age7,
    #[serde(rename = "13+")]
    Age13,
    #[serde(rename = "16+")]
    Age16,
    #[serde(rename = "18+")]
    Age18,
}

impl Maturity {
    pub const ALL: [Self; 5] = [Self::All, Self::Age7, Self::Age13, Self::Age16, Self::Age18];

    pub fn label(self) -> &'static str {
        match self {
            Self::All => "ALL",
            Self::Age7 => "7+",
            Self::Age13 => "13+",
            Self::Age16 => "16+",
            Self::Age18 => "18+",
        }
    }
}

/// Artwork variants devices ask for, with their pixel sizes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    async_graphql::Enum,
)]
#[serde(rename_all = "snake_case")]
pub enum ArtworkSize {
    PosterSmall,
    PosterLarge,
    Backdrop,
    Billboard,
}

impl ArtworkSize {
    pub const ALL: [Self; 4] = [
        Self::PosterSmall,
        Self::PosterLarge,
        Self::Backdrop,
        Self::Billboard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::PosterSmall => "poster_small",
            Self::PosterLarge => "poster_large",
            Self::Backdrop => "backdrop",
            Self::Billboard => "billboard",
        }
    }

    pub fn pixels(self) -> (u16, u16) {
        match self {
            Self::PosterSmall => (170, 255),
            Self::PosterLarge => (342, 513),
            Self::Backdrop => (1280, 720),
            Self::Billboard => (1920, 1080),
        }
    }
}

/// One artwork reference: a path under the deployment's artwork base URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artwork {
    pub size: ArtworkSize,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Title {
    pub id: String,
    pub name: String,
    pub genres: Vec<String>,
    pub synopsis: String,
    pub maturity: Maturity,
    pub runtime_minutes: u16,
    pub year: u16,
    /// 0 to 1.
    pub popularity: f32,
    pub artwork: Vec<Artwork>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub id: String,
    /// Genre name → liking, 0 to 1. Genres not listed count as 0.
    pub affinities: HashMap<String, f32>,
    /// Title ids, most recent first.
    pub recent: Vec<String>,
    pub maturity_limit: Maturity,
}

/// What the catalog knows about a live event: which titles relate to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventContent {
    pub id: String,
    pub title: String,
    pub starts_at: String,
    pub stages: Vec<String>,
    pub related_titles: Vec<String>,
    pub genres: Vec<String>,
}

/// Most stages a catalog event may have (the admin API's limit).
pub const MAX_EVENT_STAGES: usize = 32;

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
}

/// A title, indexed for ranking.
#[derive(Debug, Clone)]
pub struct TitleEntry {
    pub title: Title,
    pub genres: GenreSet,
}

/// A profile, compacted: 200k of them must stay small.
#[derive(Debug, Clone)]
pub struct ProfileEntry {
    pub id: Box<str>,
    /// Liking per genre, 0 to 255.
    pub affinities: [u8; GENRES.len()],
    /// Title indexes, most recent first.
    pub recent: Box<[u32]>,
    pub maturity_limit: Maturity,
}

#[derive(Debug, Clone)]
pub struct EventEntry {
    pub content: EventContent,
    pub related: Box<[u32]>,
    pub genres: GenreSet,
}

/// Titles, profiles and event relations, with indexes by id.
pub struct Catalog {
    pub titles: Vec<TitleEntry>,
    pub profiles: Vec<ProfileEntry>,
    pub events: Vec<EventEntry>,
    /// Title indexes, most popular first.
    pub by_popularity: Vec<u32>,
    /// A stable hash of every title's and profile's ranking inputs.
    content_hash: u64,
    title_index: HashMap<Box<str>, u32>,
    profile_index: HashMap<Box<str>, u32>,
    event_index: HashMap<Box<str>, u32>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("titles", &self.titles.len())
            .field("profiles", &self.profiles.len())
            .field("events", &self.events.len())
            .finish()
    }
}

impl Catalog {
    /// Indexes and validates titles, profiles and events (references must resolve).
    pub fn build(
        titles: Vec<Title>,
        profiles: Vec<Profile>,
        events: Vec<EventContent>,
    ) -> Result<Self, CatalogError> {
        if titles.is_empty() {
            return Err(CatalogError::Invalid {
                line: 0,
                message: "the catalog has no titles".into(),
            });
        }
        let mut title_index = HashMap::with_capacity(titles.len());
        let mut title_entries = Vec::with_capacity(titles.len());
        for (line, title) in titles.into_iter().enumerate() {
            let genres = GenreSet::from_names(&title.genres, line + 1)?;
            if !(0.0..=1.0).contains(&title.popularity) {
                return Err(CatalogError::Invalid {
                    line: line + 1,
                    message: format!("title {:?}: popularity must be between 0 and 1", title.id),
                });
            }
            if title_index
                .insert(
                    title.id.clone().into_boxed_str(),
                    title_entries.len() as u32,
                )
                .is_some()
            {
                return Err(CatalogError::Invalid {
                    line: line + 1,
                    message: format!("duplicate title id {:?}", title.id),
                });
            }
            title_entries.push(TitleEntry { title, genres });
        }
        let resolve = |ids: &[String], line: usize| -> Result<Box<[u32]>, CatalogError> {
            ids.iter()
                .map(|id| {
                    title_index
                        .get(id.as_str())
                        .copied()
                        .ok_or_else(|| CatalogError::Invalid {
                            line,
                            message: format!("unknown title {id:?}"),
                        })
                })
                .collect()
        };
        let mut profile_index = HashMap::with_capacity(profiles.len());
        let mut profile_entries = Vec::with_capacity(profiles.len());
        for (line, profile) in profiles.into_iter().enumerate() {
            let mut affinities = [0u8; GENRES.len()];
            for (name, liking) in &profile.affinities {
                let genre = GENRES
                    .iter()
                    .position(|g| g.eq_ignore_ascii_case(name))
                    .ok_or_else(|| CatalogError::Invalid {
                        line: line + 1,
                        message: format!("unknown genre {name:?}"),
                    })?;
                affinities[genre] = (liking.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            let recent = resolve(&profile.recent, line + 1)?;
            let id = profile.id.into_boxed_str();
            if profile_index
                .insert(id.clone(), profile_entries.len() as u32)
                .is_some()
            {
                return Err(CatalogError::Invalid {
                    line: line + 1,
                    message: format!("duplicate profile id {id:?}"),
                });
            }
            profile_entries.push(ProfileEntry {
                id,
                affinities,
                recent,
                maturity_limit: profile.maturity_limit,
            });
        }
        let mut event_index = HashMap::new();
        let mut event_entries = Vec::with_capacity(events.len());
        for (line, content) in events.into_iter().enumerate() {
            let related = resolve(&content.related_titles, line + 1)?;
            let genres = GenreSet::from_names(&content.genres, line + 1)?;
            let invalid = |message: String| CatalogError::Invalid {
                line: line + 1,
                message,
            };
            ringside_protocol::EventId::parse(&content.id).map_err(|e| invalid(e.to_string()))?;
            if content.stages.is_empty() || content.stages.len() > MAX_EVENT_STAGES {
                return Err(invalid(format!(
                    "event {:?}: 1 to {MAX_EVENT_STAGES} stages",
                    content.id
                )));
            }
            for (index, stage) in content.stages.iter().enumerate() {
                ringside_protocol::Stage::parse(stage).map_err(|e| invalid(e.to_string()))?;
                if content.stages[..index].contains(stage) {
                    return Err(invalid(format!(
                        "event {:?}: stage {stage} is listed twice",
                        content.id
                    )));
                }
            }
            let new_index = event_entries.len() as u32;
            if event_index
                .insert(content.id.clone().into_boxed_str(), new_index)
                .is_some()
            {
                return Err(invalid(format!("duplicate event id {:?}", content.id)));
            }
            event_entries.push(EventEntry {
                content,
                related,
                genres,
            });
        }
        let mut by_popularity: Vec<u32> = (0..title_entries.len() as u32).collect();
        by_popularity.sort_by(|&a, &b| {
            title_entries[b as usize]
                .title
                .popularity
                .total_cmp(&title_entries[a as usize].title.popularity)
        });
        let mut hash = crate::materialize::Fnv::new();
        for entry in &title_entries {
            let title = &entry.title;
            hash.write(title.id.as_bytes());
            hash.write(&entry.genres.0.to_le_bytes());
            hash.write(&[title.maturity as u8]);
            hash.write(&title.popularity.to_le_bytes());
        }
        for profile in &profile_entries {
            hash.write(profile.id.as_bytes());
            hash.write(&profile.affinities);
            hash.write(&[profile.maturity_limit as u8]);
            for recent in profile.recent.iter() {
                hash.write(&recent.to_le_bytes());
            }
        }
        Ok(Self {
            content_hash: hash.finish(),
            by_popularity,
            titles: title_entries,
            profiles: profile_entries,
            events: event_entries,
            title_index,
            profile_index,
            event_index,
        })
    }

    /// Changes whenever a title's or a profile's ranking inputs change.
    pub fn content_hash(&self) -> u64 {
        self.content_hash
    }

    pub fn title(&self, id: &str) -> Option<u32> {
        self.title_index.get(id).copied()
    }

    pub fn profile(&self, id: &str) -> Option<u32> {
        self.profile_index.get(id).copied()
    }

    pub fn event(&self, id: &str) -> Option<&EventEntry> {
        self.event_index.get(id).map(|&i| &self.events[i as usize])
    }

    /// Approximate heap bytes held, for sizing reports.
    pub fn approximate_bytes(&self) -> usize {
        let titles: usize = self
            .titles
            .iter()
            .map(|t| {
                let title = &t.title;
                std::mem::size_of::<TitleEntry>()
                    + title.id.len()
                    + title.name.len()
                    + title.synopsis.len()
                    + title.genres.iter().map(|g| g.len() + 24).sum::<usize>()
                    + title
                        .artwork
                        .iter()
                        .map(|a| a.path.len() + 32)
                        .sum::<usize>()
            })
            .sum();
        let profiles: usize = self
            .profiles
            .iter()
            .map(|p| std::mem::size_of::<ProfileEntry>() + p.id.len() + p.recent.len() * 4 + 40)
            .sum();
        titles + profiles + self.title_index.len() * 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{DatasetSize, generate};

    fn small() -> crate::generate::Dataset {
        generate(DatasetSize {
            titles: 200,
            profiles: 20,
            seed: 9,
        })
    }

    #[test]
    fn refuses_catalogs_that_would_break_ranking_or_pages() {
        let d = small();
        assert!(
            Catalog::build(Vec::new(), d.profiles.clone(), Vec::new()).is_err(),
            "no titles"
        );

        let mut titles = d.titles.clone();
        titles[3].popularity = f32::NAN;
        assert!(
            Catalog::build(titles, d.profiles.clone(), d.events.clone()).is_err(),
            "NaN popularity"
        );

        let mut events = d.events.clone();
        events.push(events[0].clone());
        assert!(
            Catalog::build(d.titles.clone(), d.profiles.clone(), events).is_err(),
            "duplicate event"
        );

        let mut events = d.events.clone();
        events[0].stages = (0..40).map(|i| format!("S{i}")).collect();
        assert!(
            Catalog::build(d.titles.clone(), d.profiles.clone(), events).is_err(),
            "too many stages"
        );

        let mut events = d.events.clone();
        events[1].stages = vec!["live".into()];
        assert!(
            Catalog::build(d.titles.clone(), d.profiles.clone(), events).is_err(),
            "bad stage name"
        );

        assert!(Catalog::build(d.titles, d.profiles, d.events).is_ok());
    }

    #[test]
    fn the_content_hash_follows_ranking_inputs() {
        let d = small();
        let base = Catalog::build(d.titles.clone(), d.profiles.clone(), d.events.clone())
            .expect("catalog");
        let same = Catalog::build(d.titles.clone(), d.profiles.clone(), d.events.clone())
            .expect("catalog");
        assert_eq!(base.content_hash(), same.content_hash());
        let mut titles = d.titles.clone();
        titles[0].maturity = Maturity::Age18;
        titles[0].popularity /= 2.0;
        let rerated = Catalog::build(titles, d.profiles, d.events).expect("catalog");
        assert_ne!(base.content_hash(), rerated.content_hash());
    }
}
