//! Deterministic demo data for the model in `scripts/demo/model.toml`, and a
//! loader that writes it to an origin.
//!
//! [`demo`] turns a [`Scale`] and a seed into every object of the model's nine
//! entity types, as `(key, JSON body)` pairs. The same scale and seed always
//! give the same objects in the same order, so a benchmark or a bug report can
//! name a seed instead of shipping data.
//!
//! The origin refuses a reference to an entity it does not hold yet (422), so
//! the objects come in three [`Wave`]s, and every reference in a wave points to
//! an object of an earlier one:
//!
//! 1. customers, products, venues, users;
//! 2. orders, events;
//! 3. comments, tags, friendships.
//!
//! [`load`] writes a wave completely (many requests in flight) before it starts
//! the next.
//!
//! # Ids
//!
//! | entity | key | example |
//! |---|---|---|
//! | customer | `customer/c{i}` | `customer/c1` |
//! | product | `product/p{i}` | `product/p1` |
//! | order | `order/o{i}` | `order/o1` |
//! | venue | `venue/v{i}` | `venue/v1` |
//! | user | `user/u{i}` | `user/u1` |
//! | event | `event/e{i}` | `event/e1` |
//! | comment | `comment/{event}/{author}.{seq}` | `comment/e1/u3.2` |
//! | tag | `tag/{event}/{tag}` | `tag/e1/jazz` |
//! | friendship | `friendship/{user}/{friend}` | `friendship/u1/u2` |
//!
//! Numbering starts at 1. A few ids are fixed so that docs and scripts can
//! point at them whatever the seed: order `o1` is customer `c1` buying product
//! `p1`; user [`POPULAR_USER`] (`u1`) is a friend of [`Counts::popular_friends`]
//! users; event [`HOT_EVENT`] (`e1`) gets one comment in 20 on top of its
//! share, so its comment list spans many pages.
//!
//! # Counts
//!
//! Per unit of scale `n` (see [`Scale::counts`]):
//!
//! | entity | count | n = 1 | n = 10 000 |
//! |---|---|---|---|
//! | customer | 10n | 10 | 100 000 |
//! | product | 5n | 5 | 50 000 |
//! | order | 40n | 40 | 400 000 |
//! | venue | 2n | 2 | 20 000 |
//! | user | 20n | 20 | 200 000 |
//! | event | 10n | 10 | 100 000 |
//! | comment | 100n | 100 | 1 000 000 |
//! | tag | 2 per event: 20n | 20 | 200 000 |
//! | friendship | 10n with `u1`, ≈2 per other user: 50n − 5 | 45 | 499 995 |
//! | **total** | 257n − 5 | **252** | **2 569 995** |

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use fastrand::Rng;
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// One object: its key (what follows `/o/`) and its JSON body.
pub type Object = (String, Value);

/// The user with many friends, at every scale.
pub const POPULAR_USER: &str = "u1";

/// The event with the most comments, at every scale.
pub const HOT_EVENT: &str = "e1";

/// How big the demo data set is: one number, `n`, multiplies every count.
///
/// `Scale::new(1)` is a few hundred objects (the `make run` demo),
/// `Scale::new(10_000)` a few million (load tests). The table in the module
/// docs gives the counts per entity type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    n: usize,
}

impl Scale {
    /// Scale `n`; 0 counts as 1, so that every reference has a target.
    pub fn new(n: usize) -> Scale {
        Scale { n: n.max(1) }
    }

    /// The multiplier.
    pub fn n(&self) -> usize {
        self.n
    }

    /// How many objects of each entity type [`demo`] yields at this scale.
    pub fn counts(&self) -> Counts {
        let n = self.n;
        let users = 20 * n;
        let events = 10 * n;
        // Half the users are friends of the popular one: a set view with a
        // member count that grows with the scale.
        let popular_friends = (10 * n).min(users - 1);
        Counts {
            customer: 10 * n,
            product: 5 * n,
            order: 40 * n,
            venue: 2 * n,
            user: users,
            event: events,
            comment: 100 * n,
            tag: TAGS_PER_EVENT * events,
            friendship: popular_friends + nearby_friendships(users),
            popular_friends,
        }
    }
}

/// Objects per entity type at one [`Scale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `customer/c{i}`.
    pub customer: usize,
    /// `product/p{i}`.
    pub product: usize,
    /// `order/o{i}`.
    pub order: usize,
    /// `venue/v{i}`.
    pub venue: usize,
    /// `user/u{i}`.
    pub user: usize,
    /// `event/e{i}`.
    pub event: usize,
    /// `comment/{event}/{author}.{seq}`.
    pub comment: usize,
    /// `tag/{event}/{tag}`.
    pub tag: usize,
    /// `friendship/{user}/{friend}`, those of [`POPULAR_USER`] included.
    pub friendship: usize,
    /// Friends of [`POPULAR_USER`]: users `u2` to `u{popular_friends + 1}`.
    pub popular_friends: usize,
}

impl Counts {
    /// `(entity type, count)` in the order of the model file.
    pub fn per_type(&self) -> [(&'static str, usize); 9] {
        [
            ("customer", self.customer),
            ("product", self.product),
            ("order", self.order),
            ("venue", self.venue),
            ("user", self.user),
            ("event", self.event),
            ("comment", self.comment),
            ("tag", self.tag),
            ("friendship", self.friendship),
        ]
    }

    /// All objects.
    pub fn total(&self) -> usize {
        self.per_type().iter().map(|(_, count)| count).sum()
    }
}

/// Objects that may be written together: none refers to another of the same
/// wave. A lazy iterator of known length, so that millions of objects never
/// sit in memory at once.
pub struct Wave {
    label: String,
    remaining: usize,
    objects: Box<dyn Iterator<Item = Object> + Send>,
}

/// One entity type's share of a wave: how many objects, and the objects.
type Part = (usize, Box<dyn Iterator<Item = Object> + Send>);

/// Boxes one entity type's objects for [`Wave::new`].
fn part(len: usize, objects: impl Iterator<Item = Object> + Send + 'static) -> Part {
    (len, Box::new(objects))
}

impl Wave {
    fn new(label: impl Into<String>, parts: Vec<Part>) -> Wave {
        let remaining = parts.iter().map(|(len, _)| len).sum();
        Wave {
            label: label.into(),
            remaining,
            objects: Box::new(parts.into_iter().flat_map(|(_, objects)| objects)),
        }
    }

    /// What the wave holds, e.g. `"comments, tags, friendships"`.
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Iterator for Wave {
    type Item = Object;

    fn next(&mut self) -> Option<Object> {
        let object = self.objects.next()?;
        self.remaining = self.remaining.saturating_sub(1);
        Some(object)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Wave {}

impl std::fmt::Debug for Wave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wave")
            .field("label", &self.label)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

// ── vocabulary ──────────────────────────────────────────────────────────────
//
// Small, fixed word lists: titles and descriptions reuse the same words across
// many events, so full-text search has words with long posting lists ("jazz",
// "night", "festival") as well as rarer ones.

// The lists are laid out by hand (`rustfmt::skip`): one word per line would
// make them ten times as long and no clearer.

/// Event categories, each with the topics its events are about. Topics are
/// single lowercase words because one becomes a tag, which is a key segment.
#[rustfmt::skip]
const CATEGORIES: [(&str, [&str; 6]); 5] = [
    ("music", ["jazz", "blues", "rock", "piano", "choir", "techno"]),
    ("tech", ["rust", "wasm", "database", "cloud", "compiler", "security"]),
    ("food", ["cheese", "wine", "ramen", "bakery", "vegan", "coffee"]),
    ("sport", ["running", "chess", "climbing", "football", "yoga", "cycling"]),
    ("art", ["painting", "photo", "sculpture", "poetry", "film", "theatre"]),
];
#[rustfmt::skip]
const TITLE_ADJECTIVES: [&str; 10] = [
    "winter", "late", "open", "grand", "little", "midnight", "early", "friday", "frosty", "city",
];
#[rustfmt::skip]
const TITLE_NOUNS: [&str; 10] = [
    "night", "festival", "meetup", "workshop", "fair", "session", "evening", "marathon", "club",
    "jam",
];
#[rustfmt::skip]
const AUDIENCES: [&str; 7] = [
    "beginners", "families", "everyone", "students", "locals", "experts", "night owls",
];
#[rustfmt::skip]
const DESCRIPTION_WORDS: [&str; 32] = [
    "live", "music", "friends", "local", "together", "free", "drinks", "stage", "hands-on",
    "talks", "food", "community", "bring", "learn", "share", "night", "jazz", "rust", "festival",
    "city", "winter", "warm", "open", "new", "fun", "tickets", "doors", "early", "late", "snacks",
    "guests", "workshop",
];
#[rustfmt::skip]
const COMMENT_WORDS: [&str; 30] = [
    "great", "loved", "it", "the", "music", "crowd", "was", "amazing", "too", "loud", "will",
    "come", "back", "food", "good", "venue", "crowded", "friendly", "staff", "thanks", "night",
    "fun", "long", "queue", "worth", "ticket", "jazz", "rust", "talk", "best",
];
/// Tags besides an event's topic; none is also a topic, so an event's tags
/// are distinct.
#[rustfmt::skip]
const TAGS: [&str; 12] = [
    "free", "outdoor", "indoor", "family", "live", "beginner", "weekend", "kids", "accessible",
    "local", "late", "premium",
];
#[rustfmt::skip]
const FIRST_NAMES: [&str; 16] = [
    "Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger",
    "Radia", "Donald", "Hedy", "Katherine", "Niklaus", "Annie",
];
#[rustfmt::skip]
const LAST_NAMES: [&str; 16] = [
    "Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie",
    "Allen", "Dijkstra", "Perlman", "Knuth", "Lamarr", "Johnson", "Wirth", "Easley",
];
#[rustfmt::skip]
const COUNTRIES: [&str; 12] = [
    "DE", "FR", "US", "JP", "BR", "IN", "NG", "SE", "ES", "CA", "KE", "AU",
];
#[rustfmt::skip]
const CITIES: [&str; 12] = [
    "Berlin", "Paris", "Lagos", "Tokyo", "Lisbon", "Austin", "Nairobi", "Oslo", "Madrid",
    "Toronto", "Sydney", "Kyoto",
];
#[rustfmt::skip]
const VENUE_ADJECTIVES: [&str; 8] = [
    "Blue", "Red", "Old", "North", "Harbour", "Garden", "Crystal", "Union",
];
#[rustfmt::skip]
const VENUE_KINDS: [&str; 8] = [
    "Hall", "Club", "Arena", "Loft", "Garden", "Theatre", "Warehouse", "Room",
];
const COLOURS: [&str; 6] = ["Red", "Blue", "Green", "Black", "Silver", "Amber"];
#[rustfmt::skip]
const THINGS: [&str; 10] = [
    "Widget", "Gadget", "Sprocket", "Lamp", "Kettle", "Notebook", "Backpack", "Bottle", "Cable",
    "Chair",
];
/// Ratings lean high, as ratings do.
const RATINGS: [u8; 10] = [1, 2, 3, 3, 4, 4, 4, 5, 5, 5];

const TAGS_PER_EVENT: usize = 2;
/// Friendships each user `u2`… starts with a user of a higher id.
const FRIENDS_PER_USER: usize = 2;
/// How far up the ids those friends are; bounded so that a user's friends
/// are not all at the far end of the id range.
const FRIEND_SPAN: usize = 1000;
/// Customers of the fan-out fixture.
const FIXTURE_CUSTOMERS: usize = 5;

// ── randomness ──────────────────────────────────────────────────────────────

/// Independent random streams, one per purpose. Each object draws from its
/// own generator, seeded from (seed, stream, index), so an object is a pure
/// function of its index: waves can be generated lazily and separately, and
/// a later wave can recompute what it needs of an earlier one (an event's
/// topic for its tag) instead of remembering it.
#[derive(Clone, Copy)]
enum Stream {
    Customer = 1,
    Product,
    Order,
    Venue,
    User,
    Event,
    Comment,
    CommentAuthor,
    Tag,
    Popular,
    Friend,
}

/// SplitMix64's finalizer: spreads nearby seeds far apart.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng(seed: u64, stream: Stream, index: usize) -> Rng {
    Rng::with_seed(mix(mix(seed ^ mix(stream as u64)) ^ index as u64))
}

fn pick<'a, T: ?Sized>(rng: &mut Rng, list: &[&'a T]) -> &'a T {
    list[rng.usize(..list.len())]
}

fn words(rng: &mut Rng, list: &[&str], count: usize) -> String {
    let mut out = String::new();
    for i in 0..count {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(pick(rng, list));
    }
    out
}

/// "a" or "an", for descriptions that read as English.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

// ── dates ───────────────────────────────────────────────────────────────────

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`), so that dates need no date crate.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of a day since 1970-01-01 (Hinnant's `civil_from_days`).
fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A date in `[from, to]`, both `(y, m, d)`.
fn date_between(rng: &mut Rng, from: (i64, i64, i64), to: (i64, i64, i64)) -> String {
    let first = days_from_civil(from.0, from.1, from.2);
    let last = days_from_civil(to.0, to.1, to.2);
    date(rng.i64(first..=last))
}

const DAY_MS: u64 = 86_400_000;
/// Events take place from December 2026 to March 2027.
const EVENTS_FROM: (i64, i64, i64) = (2026, 12, 1);
const EVENTS_TO: (i64, i64, i64) = (2027, 3, 31);
/// Orders were placed before the events season.
const ORDERS_FROM: (i64, i64, i64) = (2026, 1, 1);
const ORDERS_TO: (i64, i64, i64) = (2026, 11, 30);
/// Comments are written from two months before the first event to the last.
const COMMENTS_FROM: (i64, i64, i64) = (2026, 10, 1);

// ── the demo data set ───────────────────────────────────────────────────────

/// Every object of the demo model at `scale`, in three waves (see the module
/// docs). Deterministic: the same `scale` and `seed` give the same objects in
/// the same order.
///
/// Users carry `comment_seq`, the number of comments they wrote, so the
/// authors of all comments are drawn up front (one counter per user); the
/// rest is generated while the waves are iterated.
pub fn demo(scale: &Scale, seed: u64) -> Vec<Wave> {
    let counts = scale.counts();
    let mut comments_by = vec![0u64; counts.user + 1];
    for i in 1..=counts.comment {
        comments_by[comment_author(seed, &counts, i)] += 1;
    }
    let comments_by: Arc<[u64]> = comments_by.into();
    vec![
        Wave::new(
            "customers, products, venues, users",
            vec![
                part(counts.customer, customers(seed, counts)),
                part(counts.product, products(seed, counts)),
                part(counts.venue, venues(seed, counts)),
                part(counts.user, users(seed, counts, comments_by)),
            ],
        ),
        Wave::new(
            "orders, events",
            vec![
                part(counts.order, orders(seed, counts)),
                part(counts.event, events(seed, counts)),
            ],
        ),
        Wave::new(
            "comments, tags, friendships",
            vec![
                part(counts.comment, comments(seed, counts)),
                part(counts.tag, tags(seed, counts)),
                part(counts.friendship, friendships(seed, counts)),
            ],
        ),
    ]
}

fn customers(seed: u64, counts: Counts) -> impl Iterator<Item = Object> + Send + 'static {
    (1..=counts.customer).map(move |i| {
        let mut rng = rng(seed, Stream::Customer, i);
        let name = format!(
            "{} {}",
            pick(&mut rng, &FIRST_NAMES),
            pick(&mut rng, &LAST_NAMES)
        );
        let country = pick(&mut rng, &COUNTRIES);
        (
            format!("customer/c{i}"),
            json!({ "name": name, "country": country }),
        )
    })
}

fn products(seed: u64, counts: Counts) -> impl Iterator<Item = Object> + Send + 'static {
    (1..=counts.product).map(move |i| {
        let mut rng = rng(seed, Stream::Product, i);
        let colour = pick(&mut rng, &COLOURS);
        let thing = pick(&mut rng, &THINGS);
        let mut product =
            json!({ "code": format!("SKU-{i:06}"), "name": format!("{colour} {thing}") });
        // `description` is optional in the model: leave it out now and then.
        if rng.usize(..4) != 0 {
            let colour = colour.to_lowercase();
            let description = format!(
                "{} {colour} {} for {}.",
                capitalize(article(&colour)),
                thing.to_lowercase(),
                pick(&mut rng, &AUDIENCES)
            );
            product["description"] = json!(description);
        }
        (format!("product/p{i}"), product)
    })
}

fn venues(seed: u64, counts: Counts) -> impl Iterator<Item = Object> + Send + 'static {
    (1..=counts.venue).map(move |i| {
        let mut rng = rng(seed, Stream::Venue, i);
        let name = format!(
            "The {} {}",
            pick(&mut rng, &VENUE_ADJECTIVES),
            pick(&mut rng, &VENUE_KINDS)
        );
        let city = pick(&mut rng, &CITIES);
        (format!("venue/v{i}"), json!({ "name": name, "city": city }))
    })
}

fn users(
    seed: u64,
    counts: Counts,
    comments_by: Arc<[u64]>,
) -> impl Iterator<Item = Object> + Send + 'static {
    (1..=counts.user).map(move |i| {
        let mut rng = rng(seed, Stream::User, i);
        let name = format!(
            "{} {}",
            pick(&mut rng, &FIRST_NAMES),
            pick(&mut rng, &LAST_NAMES)
        );
        let country = pick(&mut rng, &COUNTRIES);
        let comment_seq = comments_by.get(i).copied().unwrap_or_default();
        (
            format!("user/u{i}"),
            json!({ "name": name, "country": country, "comment_seq": comment_seq }),
        )
    })
}

fn orders(seed: u64, counts: Counts) -> impl Iterator<Item = Object> + Send + 'static {
    (1..=counts.order).map(move |i| {
        let mut rng = rng(seed, Stream::Order, i);
        // o1 is always c1 buying p1, so that docs can name it.
        let (customer, product) = if i == 1 {
            (1, 1)
        } else {
            (1 + rng.usize(..counts.customer), 1 + rng.usize(..counts.product))
        };
        let date = date_between(&mut rng, ORDERS_FROM, ORDERS_TO);
        (
            format!("order/o{i}"),
            json!({ "customer": format!("c{customer}"), "product": format!("p{product}"), "date": date }),
        )
    })
}

/// What a tag of an event needs to know about it, recomputed from the seed.
struct EventPlan {
    category: &'static str,
    topic: &'static str,
    rng: Rng,
}

fn event_plan(seed: u64, i: usize) -> EventPlan {
    let mut rng = rng(seed, Stream::Event, i);
    let (category, topics) = CATEGORIES[rng.usize(..CATEGORIES.len())];
    let topic = topics[rng.usize(..topics.len())];
    EventPlan {
        category,
        topic,
        rng,
    }
}

fn events(seed: u64, counts: Counts) -> impl Iterator<Item = Object> + Send + 'static {
    (1..=counts.event).map(move |i| {
        let EventPlan {
            category,
            topic,
            mut rng,
        } = event_plan(seed, i);
        let adjective = pick(&mut rng, &TITLE_ADJECTIVES);
        let noun = pick(&mut rng, &TITLE_NOUNS);
        let title = format!(
            "{} {} {}",
            capitalize(adjective),
            capitalize(topic),
            capitalize(noun)
        );
        // The title's words again, lowercase, then filler from a shared list:
        // search for "jazz" finds jazz events and some others that mention it.
        let filler_len = 6 + rng.usize(..8);
        let filler = words(&mut rng, &DESCRIPTION_WORDS, filler_len);
        let description = format!(
            "{} {adjective} {topic} {noun} for {}. {}.",
            capitalize(article(adjective)),
            pick(&mut rng, &AUDIENCES),
            capitalize(&filler)
        );
        let date = date_between(&mut rng, EVENTS_FROM, EVENTS_TO);
        let venue = format!("v{}", 1 + rng.usize(..counts.venue));
        (
            format!("event/e{i}"),
            json!({
                "title": title,
                "description": description,
                "category": category,
                "date": date,
                "venue": venue,
            }),
        )
    })
}

/// The author (user number) of comment `i`. Skewed towards low ids, so a few
/// users write many comments and many write few or none.
fn comment_author(seed: u64, counts: &Counts, i: usize) -> usize {
    let r = rng(seed, Stream::CommentAuthor, i).f64();
    (1 + (r * r * counts.user as f64) as usize).min(counts.user)
}

fn comments(seed: u64, counts: Counts) -> impl Iterator<Item = Object> + Send + 'static {
    // Timestamps grow with the comment number, so an author's later comments
    // (higher seq) are also newer, as they would be in real life.
    let from_day = days_from_civil(COMMENTS_FROM.0, COMMENTS_FROM.1, COMMENTS_FROM.2);
    let to_day = days_from_civil(EVENTS_TO.0, EVENTS_TO.1, EVENTS_TO.2) + 1;
    let (from_ms, to_ms) = (from_day as u64 * DAY_MS, to_day as u64 * DAY_MS);
    let step = ((to_ms - from_ms) / counts.comment.max(1) as u64).max(1);
    let mut seq = vec![0u64; counts.user + 1];
    (1..=counts.comment).map(move |i| {
        let author = comment_author(seed, &counts, i);
        seq[author] += 1;
        let seq = seq[author];
        let mut rng = rng(seed, Stream::Comment, i);
        let event = if rng.usize(..20) == 0 {
            1
        } else {
            1 + rng.usize(..counts.event)
        };
        let ts = from_ms + (i as u64 - 1) * step + rng.u64(..step);
        let text_len = 4 + rng.usize(..11);
        let text = capitalize(&words(&mut rng, &COMMENT_WORDS, text_len));
        let mut comment = json!({
            "event": format!("e{event}"),
            "author": format!("u{author}"),
            "ts": ts,
            "seq": seq,
            "text": text,
        });
        // `rating` is optional: most comments rate, some only talk.
        if rng.usize(..5) != 0 {
            comment["rating"] = json!(RATINGS[rng.usize(..RATINGS.len())]);
        }
        (format!("comment/e{event}/u{author}.{seq}"), comment)
    })
}

fn tags(seed: u64, counts: Counts) -> impl Iterator<Item = Object> + Send + 'static {
    (1..=counts.event).flat_map(move |i| {
        // The event's topic ("jazz") and one general tag ("free").
        let topic = event_plan(seed, i).topic;
        let other = pick(&mut rng(seed, Stream::Tag, i), &TAGS);
        [topic, other].map(|tag| {
            (
                format!("tag/e{i}/{tag}"),
                json!({ "event": format!("e{i}"), "tag": tag }),
            )
        })
    })
}

/// Friendships of users `u2`… with users of higher ids: `FRIENDS_PER_USER`
/// each, fewer near the top, where fewer higher ids are left. Taking friends
/// only upwards, at distinct distances, makes every unordered pair unique
/// without remembering the pairs.
fn nearby_friendships(users: usize) -> usize {
    // User u{i} has min(FRIENDS_PER_USER, users - i) friends; with
    // j = users - i from 0 to users - 2, that sums to this.
    let Some(top) = users.checked_sub(2) else {
        return 0;
    };
    let f = FRIENDS_PER_USER;
    if top <= f {
        top * (top + 1) / 2
    } else {
        f * (f + 1) / 2 + f * (top - f)
    }
}

fn friendships(seed: u64, counts: Counts) -> impl Iterator<Item = Object> + Send + 'static {
    // Either side may hold the pair: the `friends` view is symmetric, and
    // both directions should be exercised.
    let friendship = |rng: &mut Rng, a: usize, b: usize| {
        let (user, friend) = if rng.bool() { (a, b) } else { (b, a) };
        (
            format!("friendship/u{user}/u{friend}"),
            json!({ "user": format!("u{user}"), "friend": format!("u{friend}") }),
        )
    };
    let popular = (2..=counts.popular_friends + 1)
        .map(move |k| friendship(&mut rng(seed, Stream::Popular, k), 1, k));
    let nearby = (2..=counts.user).flat_map(move |i| {
        let mut rng = rng(seed, Stream::Friend, i);
        let span = FRIEND_SPAN.min(counts.user - i);
        let mut distances: Vec<usize> = Vec::with_capacity(FRIENDS_PER_USER);
        while distances.len() < FRIENDS_PER_USER.min(span) {
            let d = 1 + rng.usize(..span);
            if !distances.contains(&d) {
                distances.push(d);
            }
        }
        distances
            .into_iter()
            .map(move |d| friendship(&mut rng, i, i + d))
            .collect::<Vec<_>>()
    });
    popular.chain(nearby)
}

// ── the fan-out fixture ─────────────────────────────────────────────────────

/// A fan-out fixture: product `p0`, customers `c1`…`c5`, and `n` orders
/// `o1`…`o{n}` all of product `p0` (customers in turn). Renaming `p0` then
/// regenerates `order_page/o1`…`order_page/o{n}`.
pub fn one_product_orders(n: usize) -> Vec<Wave> {
    let product = (
        "product/p0".to_owned(),
        json!({ "code": "SKU-000000", "name": "Fan-out Widget", "description": "The one product of every order." }),
    );
    let customers = (1..=FIXTURE_CUSTOMERS).map(|i| {
        (
            format!("customer/c{i}"),
            json!({ "name": format!("Customer {i}"), "country": COUNTRIES[i % COUNTRIES.len()] }),
        )
    });
    let first = days_from_civil(ORDERS_FROM.0, ORDERS_FROM.1, ORDERS_FROM.2);
    let days = days_from_civil(ORDERS_TO.0, ORDERS_TO.1, ORDERS_TO.2) - first + 1;
    let orders = (1..=n).map(move |i| {
        let customer = 1 + (i - 1) % FIXTURE_CUSTOMERS;
        (
            format!("order/o{i}"),
            json!({
                "customer": format!("c{customer}"),
                "product": "p0",
                "date": date(first + i as i64 % days),
            }),
        )
    });
    vec![
        Wave::new(
            "product p0, customers",
            vec![
                part(1, std::iter::once(product)),
                part(FIXTURE_CUSTOMERS, customers),
            ],
        ),
        Wave::new("orders of p0", vec![part(n, orders)]),
    ]
}

// ── loading ─────────────────────────────────────────────────────────────────

/// What [`load`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadStats {
    /// Objects written (each acknowledged with a 2xx).
    pub objects: u64,
    /// Waves written.
    pub waves: usize,
    /// Requests repeated after a `503` with `Retry-After`.
    pub retries: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

impl LoadStats {
    /// Objects written per second.
    pub fn per_sec(&self) -> f64 {
        self.objects as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How often one write is retried after `503` + `Retry-After` before the
/// load gives up: an origin that keeps refusing for that long is not coming
/// back by itself.
const MAX_RETRIES: u64 = 120;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `PUT`s every object of `waves` to `base` (e.g. `http://127.0.0.1:8080`) at
/// `/o/{key}`, with up to `concurrency` requests in flight. A wave is written
/// completely before the next one starts, so references always find their
/// target.
///
/// Fails on the first answer that is not 2xx, naming the key, the status and
/// the body. A `503` with `Retry-After` (an origin shedding load) is retried
/// after that many seconds, up to `MAX_RETRIES` times per object. With
/// `progress`, a progress bar is drawn on stderr.
pub async fn load(
    to: &Destination,
    token: Option<&str>,
    waves: Vec<Wave>,
    concurrency: usize,
    progress: bool,
) -> anyhow::Result<LoadStats> {
    let concurrency = concurrency.max(1);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(concurrency)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let total: usize = waves.iter().map(ExactSizeIterator::len).sum();
    let bar = if progress {
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} ({per_sec}) {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };

    let start = Instant::now();
    let mut stats = LoadStats {
        objects: 0,
        waves: 0,
        retries: 0,
        elapsed: Duration::ZERO,
    };
    for wave in waves {
        bar.set_message(wave.label().to_owned());
        let written = stream::iter(wave)
            .map(|(key, value)| put(&client, to.base(&key), key, value))
            .buffer_unordered(concurrency)
            .try_fold((0u64, 0u64), |(objects, retries), object_retries| {
                bar.inc(1);
                async move { Ok((objects + 1, retries + object_retries)) }
            })
            .await;
        let (objects, retries) = match written {
            Ok(written) => written,
            Err(err) => {
                bar.abandon();
                return Err(err);
            }
        };
        stats.objects += objects;
        stats.retries += retries;
        stats.waves += 1;
    }
    stats.elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(stats)
}

/// Where [`load`] writes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Every object to one origin (or edge) at this base URL.
    Origin(String),
    /// Each object to its owner in this origin list, as the edge routes
    /// (for loading a cluster without an edge in front).
    Cluster(prefold_core::OriginList),
}

impl Destination {
    /// The base URL a key is written to.
    fn base(&self, key: &str) -> &str {
        match self {
            Destination::Origin(base) => base.trim_end_matches('/'),
            Destination::Cluster(list) => match prefold_core::Key::parse(key) {
                Ok(k) => &list.owner(&k).url,
                // The origin refuses it with a precise answer.
                Err(_) => &list.origins()[0].url,
            },
        }
    }
}

/// One `PUT`; returns how many times it was retried.
async fn put(
    client: &reqwest::Client,
    base: &str,
    key: String,
    value: Value,
) -> anyhow::Result<u64> {
    let url = format!("{base}/o/{key}");
    let body = Bytes::from(serde_json::to_vec(&value).with_context(|| format!("encoding {key}"))?);
    let mut retries = 0;
    loop {
        let response = client
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(retries);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(seconds) = retry_after {
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && retries < MAX_RETRIES {
                retries += 1;
                // Retry-After: 0 would otherwise spin.
                tokio::time::sleep(Duration::from_secs(seconds).max(Duration::from_millis(10)))
                    .await;
                continue;
            }
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(2000).collect();
        bail!("PUT /o/{key} answered {status} (after {retries} retries): {text}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{HashMap, HashSet};

    use prefold_core::Key;

    use super::*;

    /// An entity of `scripts/demo/model.toml`: its route field and its
    /// fields with their types.
    struct Entity {
        route: Option<String>,
        fields: HashMap<String, String>,
    }

    /// The `[entity.*]` tables of the demo model. A few lines of parsing for
    /// the one shape the file uses (`route = "…"`, `fields = { a = "t", … }`
    /// on one line), so the tests check the generator against the real model
    /// rather than a copy of it, without a TOML dependency.
    fn model() -> HashMap<String, Entity> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo/model.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut entities = HashMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let line = line.split('#').next().unwrap().trim();
            if line.starts_with('[') {
                current = line
                    .strip_prefix("[entity.")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .map(str::to_owned);
                if let Some(name) = &current {
                    entities.insert(
                        name.clone(),
                        Entity {
                            route: None,
                            fields: HashMap::new(),
                        },
                    );
                }
                continue;
            }
            let Some(name) = &current else { continue };
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let entity = entities.get_mut(name).unwrap();
            match k.trim() {
                "route" => entity.route = Some(v.trim().trim_matches('"').to_owned()),
                "fields" => {
                    let inner = v
                        .trim()
                        .strip_prefix('{')
                        .unwrap()
                        .strip_suffix('}')
                        .unwrap();
                    for field in inner.split(',') {
                        let (f, t) = field.split_once('=').unwrap();
                        entity
                            .fields
                            .insert(f.trim().to_owned(), t.trim().trim_matches('"').to_owned());
                    }
                }
                other => panic!("model.toml: unexpected entity key {other}"),
            }
        }
        assert_eq!(entities.len(), 9, "model.toml: the nine entity types");
        entities
    }

    fn collect(waves: Vec<Wave>) -> Vec<Vec<Object>> {
        waves
            .into_iter()
            .map(|wave| {
                let len = wave.len();
                let objects: Vec<Object> = wave.collect();
                assert_eq!(objects.len(), len, "a wave's announced length");
                objects
            })
            .collect()
    }

    fn is_date(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 3 || parts[0].len() != 4 || parts[1].len() != 2 || parts[2].len() != 2 {
            return false;
        }
        let [y, m, d] = [0, 1, 2].map(|i| parts[i].parse::<i64>().unwrap());
        // A real date survives the round trip through days.
        date(days_from_civil(y, m, d)) == s
    }

    /// Checks every object against the model: key shape, route, declared and
    /// required fields, field types, and references to earlier waves only.
    fn check_against_model(waves: &[Vec<Object>]) {
        let model = model();
        let mut written: HashSet<String> = HashSet::new();
        for wave in waves {
            let mut this_wave = Vec::new();
            for (key, value) in wave {
                let parsed = Key::parse(key).unwrap();
                assert_eq!(parsed.as_str(), key, "{key} is canonical");
                let segments: Vec<&str> = key.split('/').collect();
                let entity = model
                    .get(segments[0])
                    .unwrap_or_else(|| panic!("{key}: not an entity of the model"));
                let object = value.as_object().unwrap();
                match &entity.route {
                    Some(route) => {
                        assert_eq!(segments.len(), 3, "{key}");
                        assert_eq!(object[route].as_str(), Some(segments[1]), "{key}: route");
                    }
                    None => assert_eq!(segments.len(), 2, "{key}"),
                }
                for field in object.keys() {
                    assert!(
                        entity.fields.contains_key(field),
                        "{key}: undeclared {field}"
                    );
                }
                for (field, ty) in &entity.fields {
                    let (ty, optional) = match ty.strip_suffix('?') {
                        Some(ty) => (ty, true),
                        None => (ty.as_str(), false),
                    };
                    let Some(v) = object.get(field) else {
                        assert!(optional, "{key}: required {field} missing");
                        continue;
                    };
                    let ok = match ty {
                        "string" => v.is_string(),
                        "int" => v.is_i64() || v.is_u64(),
                        "number" => v.is_number(),
                        "bool" => v.is_boolean(),
                        "date" => v.as_str().is_some_and(is_date),
                        "timestamp" => v.is_u64(),
                        _ => {
                            let target = ty.strip_prefix("ref:").unwrap();
                            let id = v.as_str().unwrap();
                            assert!(
                                written.contains(&format!("{target}/{id}")),
                                "{key}: {field} = {id} is not a {target} of an earlier wave"
                            );
                            true
                        }
                    };
                    assert!(ok, "{key}: {field} = {v} is not a {ty}");
                }
                this_wave.push(key.clone());
            }
            for key in this_wave {
                assert!(written.insert(key.clone()), "duplicate key {key}");
            }
        }
    }

    fn per_type(waves: &[Vec<Object>]) -> HashMap<&str, usize> {
        let mut counts = HashMap::new();
        for (key, _) in waves.iter().flatten() {
            *counts.entry(key.split('/').next().unwrap()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = collect(demo(&Scale::new(2), 7));
        let b = collect(demo(&Scale::new(2), 7));
        assert_eq!(a, b);
        let c = collect(demo(&Scale::new(2), 8));
        assert_ne!(a, c, "another seed, other data");
        // Keys follow the counts, not the seed: only the values differ.
        let keys = |w: &[Vec<Object>]| -> HashSet<String> {
            w.iter()
                .flatten()
                .filter(|(k, _)| {
                    !k.starts_with("comment/")
                        && !k.starts_with("tag/")
                        && !k.starts_with("friendship/")
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        assert_eq!(keys(&a), keys(&c));
    }

    #[test]
    fn matches_the_model_with_refs_to_earlier_waves() {
        for (n, seed) in [(1, 1), (3, 42), (7, u64::MAX)] {
            check_against_model(&collect(demo(&Scale::new(n), seed)));
        }
    }

    #[test]
    fn the_fan_out_fixture_matches_the_model() {
        let waves = collect(one_product_orders(300));
        check_against_model(&waves);
        let orders: Vec<&Object> = waves[1].iter().collect();
        assert_eq!(orders.len(), 300);
        assert!(orders.iter().all(|(_, o)| o["product"] == "p0"));
        assert_eq!(waves[0][0].0, "product/p0");
        assert_eq!(collect(one_product_orders(0))[1].len(), 0);
    }

    #[test]
    fn counts_match_and_grow_with_the_scale() {
        for n in [1, 2, 5] {
            let counts = Scale::new(n).counts();
            let waves = collect(demo(&Scale::new(n), 3));
            let actual = per_type(&waves);
            for (kind, count) in counts.per_type() {
                assert_eq!(
                    actual.get(kind).copied().unwrap_or(0),
                    count,
                    "{kind} at n = {n}"
                );
            }
            assert_eq!(waves.iter().map(Vec::len).sum::<usize>(), counts.total());
        }
        let small = Scale::new(1).counts();
        let larger = Scale::new(2).counts();
        for ((kind, a), (_, b)) in small.per_type().into_iter().zip(larger.per_type()) {
            assert!(b > a, "{kind}: {b} at n = 2, {a} at n = 1");
        }
        // The documented sizes: a few hundred, a few million.
        assert_eq!(small.total(), 252);
        assert_eq!(Scale::new(10_000).counts().total(), 2_569_995);
        assert_eq!(Scale::new(0), Scale::new(1));
    }

    #[test]
    fn comment_keys_and_user_comment_seq_agree() {
        let waves = collect(demo(&Scale::new(4), 9));
        let mut authored: HashMap<String, u64> = HashMap::new();
        let mut last_ts: HashMap<String, u64> = HashMap::new();
        for (key, c) in waves[2].iter().filter(|(k, _)| k.starts_with("comment/")) {
            let author = c["author"].as_str().unwrap().to_owned();
            let seq = c["seq"].as_u64().unwrap();
            let count = authored.entry(author.clone()).or_insert(0);
            *count += 1;
            assert_eq!(seq, *count, "{key}: seq is the author's running number");
            assert_eq!(
                key,
                &format!("comment/{}/{author}.{seq}", c["event"].as_str().unwrap())
            );
            let ts = c["ts"].as_u64().unwrap();
            assert!(
                last_ts.insert(author, ts).is_none_or(|prev| prev < ts),
                "{key}: newer than the author's previous"
            );
            if let Some(rating) = c.get("rating") {
                assert!((1..=5).contains(&rating.as_u64().unwrap()));
            }
        }
        let comments = waves[2]
            .iter()
            .filter(|(k, _)| k.starts_with("comment/"))
            .count();
        let rated = waves[2]
            .iter()
            .filter(|(k, c)| k.starts_with("comment/") && c.get("rating").is_some())
            .count();
        assert!(
            rated * 2 > comments,
            "most comments rate: {rated} of {comments}"
        );
        for (key, user) in waves[0].iter().filter(|(k, _)| k.starts_with("user/")) {
            let id = key.strip_prefix("user/").unwrap();
            let expected = authored.get(id).copied().unwrap_or(0);
            assert_eq!(user["comment_seq"].as_u64(), Some(expected), "{key}");
        }
        let hot = waves[2]
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("comment/{HOT_EVENT}/")))
            .count();
        assert!(
            hot * 20 >= comments,
            "{HOT_EVENT} is hot: {hot} of {comments}"
        );
    }

    #[test]
    fn friendships_are_unique_pairs_and_one_user_is_popular() {
        let scale = Scale::new(3);
        let waves = collect(demo(&scale, 5));
        let mut pairs = HashSet::new();
        let mut friends_of: HashMap<String, usize> = HashMap::new();
        for (key, f) in waves[2]
            .iter()
            .filter(|(k, _)| k.starts_with("friendship/"))
        {
            let user = f["user"].as_str().unwrap().to_owned();
            let friend = f["friend"].as_str().unwrap().to_owned();
            assert_ne!(user, friend, "{key}");
            let pair = if user < friend {
                (user.clone(), friend.clone())
            } else {
                (friend.clone(), user.clone())
            };
            assert!(pairs.insert(pair), "{key}: the pair twice");
            *friends_of.entry(user).or_default() += 1;
            *friends_of.entry(friend).or_default() += 1;
        }
        let popular = friends_of[POPULAR_USER];
        assert_eq!(popular, scale.counts().popular_friends);
        assert!(friends_of
            .iter()
            .all(|(u, &n)| u == POPULAR_USER || n < popular));
        // Both directions occur, for the symmetric view.
        let stored_by_popular = waves[2]
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("friendship/{POPULAR_USER}/")))
            .count();
        assert!(stored_by_popular > 0 && stored_by_popular < popular);
    }

    #[test]
    fn events_have_a_category_dates_in_season_two_tags_and_shared_words() {
        let waves = collect(demo(&Scale::new(5), 11));
        let categories: HashSet<&str> = CATEGORIES.iter().map(|(c, _)| *c).collect();
        let season = (
            date(days_from_civil(EVENTS_FROM.0, EVENTS_FROM.1, EVENTS_FROM.2)),
            date(days_from_civil(EVENTS_TO.0, EVENTS_TO.1, EVENTS_TO.2)),
        );
        let mut word_events: HashMap<String, usize> = HashMap::new();
        let events: Vec<&Object> = waves[1]
            .iter()
            .filter(|(k, _)| k.starts_with("event/"))
            .collect();
        for (key, e) in &events {
            assert!(
                categories.contains(e["category"].as_str().unwrap()),
                "{key}"
            );
            let d = e["date"].as_str().unwrap();
            assert!(
                season.0.as_str() <= d && d <= season.1.as_str(),
                "{key}: {d}"
            );
            let text = format!("{} {}", e["title"], e["description"]).to_lowercase();
            let mut seen = HashSet::new();
            for word in text
                .split(|c: char| !c.is_ascii_alphabetic())
                .filter(|w| !w.is_empty())
            {
                if seen.insert(word.to_owned()) {
                    *word_events.entry(word.to_owned()).or_default() += 1;
                }
            }
        }
        let jazz = word_events.get("jazz").copied().unwrap_or(0);
        assert!(
            jazz > 1 && jazz < events.len(),
            "jazz in {jazz} of {} events",
            events.len()
        );
        let mut tags: HashMap<&str, usize> = HashMap::new();
        for (_, t) in waves[2].iter().filter(|(k, _)| k.starts_with("tag/")) {
            *tags.entry(t["event"].as_str().unwrap()).or_default() += 1;
        }
        assert_eq!(tags.len(), events.len());
        assert!(tags.values().all(|&n| n == TAGS_PER_EVENT));
    }

    #[test]
    fn fixed_ids_for_docs() {
        let waves = collect(demo(&Scale::new(1), 1));
        let o1 = &waves[1].iter().find(|(k, _)| k == "order/o1").unwrap().1;
        assert_eq!(o1["customer"], "c1");
        assert_eq!(o1["product"], "p1");
        assert!(waves[0]
            .iter()
            .any(|(k, _)| k == &format!("user/{POPULAR_USER}")));
        assert!(waves[1]
            .iter()
            .any(|(k, _)| k == &format!("event/{HOT_EVENT}")));
        // scripts/run.sh points at these views of the `make run` data.
        let events: Vec<&Value> = waves[1]
            .iter()
            .filter(|(k, _)| k.starts_with("event/"))
            .map(|(_, e)| e)
            .collect();
        assert!(events.iter().any(|e| e["category"] == "music"));
        assert!(events
            .iter()
            .any(|e| e["description"].as_str().unwrap().contains("jazz")));
    }

    /// A stand-in origin: records every `PUT` (key, in arrival order),
    /// answers the first `PUT` of each key in `busy` with `503` +
    /// `Retry-After: 0`, and refuses `refuse` with a 422 and a body.
    async fn fake_origin(
        busy: &[&str],
        refuse: &str,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;

        #[derive(Clone)]
        struct Fake {
            log: Arc<std::sync::Mutex<Vec<String>>>,
            busy: Arc<std::sync::Mutex<HashSet<String>>>,
            refuse: String,
        }
        async fn put(
            State(fake): State<Fake>,
            Path(key): Path<String>,
            headers: HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            assert_eq!(headers["content-type"], "application/json");
            serde_json::from_slice::<Value>(&body).unwrap();
            if fake.busy.lock().unwrap().remove(&key) {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "0")],
                    "busy",
                )
                    .into_response();
            }
            if key == fake.refuse {
                return (StatusCode::UNPROCESSABLE_ENTITY, "dangling ref").into_response();
            }
            fake.log.lock().unwrap().push(key);
            StatusCode::OK.into_response()
        }

        let fake = Fake {
            log: Arc::default(),
            busy: Arc::new(std::sync::Mutex::new(
                busy.iter().map(|k| k.to_string()).collect(),
            )),
            refuse: refuse.to_owned(),
        };
        let log = fake.log.clone();
        let app = axum::Router::new()
            .route("/o/{*key}", axum::routing::put(put))
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), log)
    }

    #[tokio::test]
    async fn load_writes_wave_after_wave_and_retries_503() {
        let (base, log) = fake_origin(&["user/u1", "comment/e1/u1.1", "order/o2"], "").await;
        let scale = Scale::new(1);
        let stats = load(
            &Destination::Origin(base.clone()),
            None,
            demo(&scale, 1),
            16,
            false,
        )
        .await
        .unwrap();
        assert_eq!(stats.objects, scale.counts().total() as u64);
        assert_eq!(stats.waves, 3);
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), scale.counts().total());
        let expected: Vec<HashSet<String>> = collect(demo(&scale, 1))
            .into_iter()
            .map(|wave| wave.into_iter().map(|(key, _)| key).collect())
            .collect();
        // Everything of a wave arrives before anything of the next.
        let mut at = 0;
        for wave in &expected {
            let arrived: HashSet<String> = log[at..at + wave.len()].iter().cloned().collect();
            assert_eq!(&arrived, wave);
            at += wave.len();
        }
        // Only keys that exist were made busy; each was retried once.
        let busy_existing = ["user/u1", "comment/e1/u1.1", "order/o2"]
            .iter()
            .filter(|k| expected.iter().any(|w| w.contains(**k)))
            .count();
        assert_eq!(stats.retries, busy_existing as u64);
        assert!(stats.per_sec() > 0.0);
    }

    #[tokio::test]
    async fn load_fails_with_key_status_and_body() {
        let (base, log) = fake_origin(&[], "order/o3").await;
        let err = load(
            &Destination::Origin(base.clone()),
            None,
            one_product_orders(10),
            4,
            false,
        )
        .await
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("/o/order/o3"), "{message}");
        assert!(message.contains("422"), "{message}");
        assert!(message.contains("dangling ref"), "{message}");
        assert!(log.lock().unwrap().len() < 16);
        // Nothing listening: the error names the URL.
        let err = load(
            &Destination::Origin("http://127.0.0.1:9".into()),
            None,
            one_product_orders(1),
            1,
            false,
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("product/p0"), "{err:#}");
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(days_from_civil(2027, 3, 1) - 1), "2027-02-28");
        assert_eq!(date(days_from_civil(2028, 3, 1) - 1), "2028-02-29");
        assert!(!is_date("2027-02-29"));
    }
}
