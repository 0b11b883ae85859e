//! A deterministic, realistic dataset: the same seed gives the same titles, profiles and events
//! on every machine, so every node of a deployment (and every benchmark run) agrees on it.
//!
//! Popularity follows a long tail (a few titles are watched by many), titles have one to three
//! genres, profiles like two to four genres with a strong favourite, and their recent watches
//! come from the genres they like.

use std::collections::HashMap;

use fastrand::Rng;

use crate::catalog::{Artwork, ArtworkSize, EventContent, GENRES, Maturity, Profile, Title};

/// How big a dataset to make.
#[derive(Debug, Clone, Copy)]
pub struct DatasetSize {
    pub titles: usize,
    pub profiles: usize,
    pub seed: u64,
}

impl Default for DatasetSize {
    fn default() -> Self {
        Self {
            titles: 20_000,
            profiles: 200_000,
            seed: 7,
        }
    }
}

/// The generated dataset, in the same shapes the JSON-lines loader reads.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub titles: Vec<Title>,
    pub profiles: Vec<Profile>,
    pub events: Vec<EventContent>,
}

const ADJECTIVES: [&str; 24] = [
    "Silent", "Broken", "Golden", "Last", "Hidden", "Crimson", "Wild", "Endless", "Midnight",
    "Frozen", "Electric", "Lost", "Burning", "Hollow", "Iron", "Velvet", "Restless", "Northern",
    "Secret", "Distant", "Savage", "Bright", "Final", "Quiet",
];
const NOUNS: [&str; 24] = [
    "Horizon", "Kingdom", "Signal", "Harbor", "Echo", "Frontier", "Garden", "Empire", "River",
    "Machine", "Season", "Ledger", "Orbit", "Summit", "Citadel", "Voyage", "Circuit", "Canyon",
    "Protocol", "Arena", "Lantern", "Tide", "Verdict", "Mirage",
];
const PLOTS: [&str; 12] = [
    "an unlikely team races against time",
    "a family secret resurfaces after decades",
    "a rookie faces the fight of a lifetime",
    "two rivals are forced to work together",
    "a small town is turned upside down",
    "an expedition discovers more than it bargained for",
    "a champion plots one last comeback",
    "a detective follows a trail nobody else sees",
    "friends reunite for one unforgettable night",
    "a crew attempts the impossible heist",
    "a musician chases a sound from the past",
    "a city prepares for the biggest night of the year",
];

/// Genre weights for drawing a title's genres: some genres are far more common than others.
const GENRE_WEIGHTS: [u32; 20] = [9, 9, 10, 5, 6, 7, 5, 5, 4, 4, 6, 4, 4, 3, 3, 4, 3, 2, 1, 3];

fn weighted_genre(rng: &mut Rng) -> usize {
    let total: u32 = GENRE_WEIGHTS.iter().sum();
    let mut pick = rng.u32(0..total);
    for (genre, weight) in GENRE_WEIGHTS.iter().enumerate() {
        if pick < *weight {
            return genre;
        }
        pick -= weight;
    }
    0
}

fn title_id(index: usize) -> String {
    format!("t{index:06}")
}

/// Makes a dataset of the given size, deterministically from its seed.
pub fn generate(size: DatasetSize) -> Dataset {
    let mut rng = Rng::with_seed(size.seed);
    let titles = generate_titles(&mut rng, size.titles);
    let mut by_genre: Vec<Vec<usize>> = vec![Vec::new(); GENRES.len()];
    for (index, title) in titles.iter().enumerate() {
        for genre in &title.genres {
            if let Some(g) = GENRES.iter().position(|name| name == genre) {
                by_genre[g].push(index);
            }
        }
    }
    let profiles = generate_profiles(&mut rng, size.profiles, &titles, &by_genre);
    let events = generate_events(&mut rng, &titles, &by_genre);
    Dataset {
        titles,
        profiles,
        events,
    }
}

fn generate_titles(rng: &mut Rng, count: usize) -> Vec<Title> {
    // A long tail: popularity by rank, ranks shuffled over titles.
    let mut ranks: Vec<usize> = (1..=count).collect();
    rng.shuffle(&mut ranks);
    (0..count)
        .map(|index| {
            let id = title_id(index);
            let genre_count = 1 + usize::from(rng.u8(0..10) >= 4) + usize::from(rng.u8(0..10) >= 8);
            let mut genres: Vec<usize> = Vec::with_capacity(genre_count);
            while genres.len() < genre_count {
                let genre = weighted_genre(rng);
                if !genres.contains(&genre) {
                    genres.push(genre);
                }
            }
            let episodic = rng.bool();
            let maturity = Maturity::ALL[[0, 1, 2, 2, 3, 3, 4][rng.usize(0..7)]];
            let name = format!(
                "The {} {}{}",
                ADJECTIVES[rng.usize(0..ADJECTIVES.len())],
                NOUNS[rng.usize(0..NOUNS.len())],
                if rng.u8(0..4) == 0 {
                    format!(" {}", rng.u8(2..5))
                } else {
                    String::new()
                }
            );
            let synopsis = format!(
                "In this {} {}, {}.",
                GENRES[genres[0]].to_lowercase(),
                if episodic { "series" } else { "film" },
                PLOTS[rng.usize(0..PLOTS.len())]
            );
            Title {
                artwork: ArtworkSize::ALL
                    .iter()
                    .map(|&size| Artwork {
                        size,
                        path: format!("titles/{id}/{}.jpg", size.name()),
                    })
                    .collect(),
                id,
                name,
                genres: genres.iter().map(|&g| GENRES[g].to_owned()).collect(),
                synopsis,
                maturity,
                runtime_minutes: if episodic {
                    rng.u16(22..62)
                } else {
                    rng.u16(80..181)
                },
                year: rng.u16(1965..2027),
                popularity: 1.0 / (ranks[index] as f32).powf(0.6),
            }
        })
        .collect()
}

fn generate_profiles(
    rng: &mut Rng,
    count: usize,
    titles: &[Title],
    by_genre: &[Vec<usize>],
) -> Vec<Profile> {
    (0..count)
        .map(|index| {
            let liked = rng.usize(2..5);
            let mut affinities = HashMap::with_capacity(liked);
            let mut favourites = Vec::with_capacity(liked);
            for rank in 0..liked {
                let genre = weighted_genre(rng);
                if affinities.contains_key(GENRES[genre]) {
                    continue;
                }
                // The favourite genre is liked a lot, the others progressively less.
                let liking = (1.0 - 0.25 * rank as f32) * (0.7 + 0.3 * rng.f32());
                affinities.insert(GENRES[genre].to_owned(), (liking * 100.0).round() / 100.0);
                favourites.push(genre);
            }
            let recent_count = rng.usize(0..9);
            let mut recent = Vec::with_capacity(recent_count);
            for _ in 0..recent_count {
                let genre = favourites[rng.usize(0..favourites.len())];
                if let Some(&title) =
                    by_genre[genre].get(rng.usize(0..by_genre[genre].len().max(1)))
                {
                    let id = title_id(title);
                    if !recent.contains(&id) && title < titles.len() {
                        recent.push(id);
                    }
                }
            }
            let kids = rng.u8(0..10) == 0;
            Profile {
                id: format!("p{index:06}"),
                affinities,
                recent,
                maturity_limit: if kids {
                    Maturity::Age7
                } else {
                    Maturity::Age18
                },
            }
        })
        .collect()
}

/// One of the dataset's live events.
struct EventTemplate {
    id: &'static str,
    title: &'static str,
    starts_at: &'static str,
    stages: &'static [&'static str],
    genres: &'static [&'static str],
}

fn generate_events(rng: &mut Rng, titles: &[Title], by_genre: &[Vec<usize>]) -> Vec<EventContent> {
    let specs = [
        EventTemplate {
            id: "fight-night",
            title: "Fight Night: Title Bout",
            starts_at: "2026-12-05T20:00:00Z",
            stages: &["UPCOMING", "LIVE", "ENDED"],
            genres: &["Sports", "Action"],
        },
        EventTemplate {
            id: "championship-final",
            title: "Championship Final",
            starts_at: "2026-12-12T18:00:00Z",
            stages: &["UPCOMING", "LIVE", "ENDED"],
            genres: &["Sports", "Documentary"],
        },
        EventTemplate {
            id: "awards-gala",
            title: "The Awards Gala",
            starts_at: "2026-12-19T01:00:00Z",
            stages: &["UPCOMING", "RED_CARPET", "LIVE", "ENDED"],
            genres: &["Music", "Drama", "Documentary"],
        },
        EventTemplate {
            id: "season-premiere",
            title: "Season Premiere Night",
            starts_at: "2026-12-26T21:00:00Z",
            stages: &["UPCOMING", "LIVE", "ENDED"],
            genres: &["SciFi", "Drama"],
        },
    ];
    specs
        .iter()
        .map(
            |EventTemplate {
                 id,
                 title,
                 starts_at,
                 stages,
                 genres,
             }| {
                let mut related = Vec::new();
                for genre in genres
                    .iter()
                    .filter_map(|g| GENRES.iter().position(|name| name == g))
                {
                    let pool = &by_genre[genre];
                    for _ in 0..60.min(pool.len()) {
                        let candidate = pool[rng.usize(0..pool.len())];
                        let id = title_id(candidate);
                        if !related.contains(&id) && candidate < titles.len() {
                            related.push(id);
                        }
                    }
                }
                EventContent {
                    id: (*id).to_owned(),
                    title: (*title).to_owned(),
                    starts_at: (*starts_at).to_owned(),
                    stages: stages.iter().map(|s| (*s).to_owned()).collect(),
                    related_titles: related,
                    genres: genres.iter().map(|g| (*g).to_owned()).collect(),
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_dataset() {
        let size = DatasetSize {
            titles: 500,
            profiles: 300,
            seed: 42,
        };
        let (a, b) = (generate(size), generate(size));
        assert_eq!(a.titles, b.titles);
        assert_eq!(a.profiles, b.profiles);
        assert_eq!(a.events, b.events);
        let other = generate(DatasetSize { seed: 43, ..size });
        assert_ne!(a.titles, other.titles);
    }

    #[test]
    fn the_dataset_is_consistent_and_long_tailed() {
        let dataset = generate(DatasetSize {
            titles: 2_000,
            profiles: 1_000,
            seed: 1,
        });
        let catalog =
            crate::catalog::Catalog::build(dataset.titles, dataset.profiles, dataset.events)
                .expect("every reference resolves");
        assert_eq!(catalog.titles.len(), 2_000);
        assert_eq!(catalog.profiles.len(), 1_000);
        assert_eq!(catalog.events.len(), 4);
        let mut popularity: Vec<f32> = catalog.titles.iter().map(|t| t.title.popularity).collect();
        popularity.sort_by(|a, b| b.total_cmp(a));
        assert!(popularity[0] > 20.0 * popularity[1_000], "a long tail");
        assert!(catalog.events.iter().all(|e| e.related.len() >= 30));
    }
}
