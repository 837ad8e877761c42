//! Attributes, scenes and the prompt grammar.
//!
//! Grammar (lower case; the parser also accepts upper case and extra spaces):
//!
//! ```text
//! one-object  := "a" [size] colour shape [position] [background]
//! two-object  := "a" colour shape relation "a" colour shape [background]
//! size        := "small" | "large"
//! colour      := "red" | "green" | "blue" | "yellow" | "purple" | "cyan"
//! shape       := "circle" | "square" | "triangle"
//! position    := "in the center" | "at the " ("top left" | "top" | "top right" | "left" |
//!                "right" | "bottom left" | "bottom" | "bottom right")
//! relation    := "left of" | "right of" | "above" | "below"
//! background  := "on a " (colour | "white" | "black" | "gray") " background"
//! ```
//!
//! A background must differ from the object colours and two objects must differ in colour: the
//! checker segments by colour, and a prompt it could not verify would be useless as training
//! data. [`Scene`]'s `Display` writes the canonical text and [`Scene::parse`] reads it back
//! (round trip tested for every sampled scene).

use super::rng::WorldRng;
use super::WorldError;
use std::collections::HashSet;
use std::fmt;

/// The palette: six object colours and three background-only greys. RGB values from the
/// reference study: far apart in RGB so that nearest-palette segmentation is unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Cyan,
    White,
    Black,
    Gray,
}

impl Color {
    /// Every palette colour (backgrounds may be any of them).
    pub const ALL: [Color; 9] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Cyan,
        Color::White,
        Color::Black,
        Color::Gray,
    ];
    /// The colours objects may have.
    pub const OBJECT: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Cyan,
    ];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 30, 30],
            Color::Green => [40, 170, 40],
            Color::Blue => [40, 70, 230],
            Color::Yellow => [240, 220, 40],
            Color::Purple => [160, 40, 210],
            Color::Cyan => [40, 210, 220],
            Color::White => [240, 240, 240],
            Color::Black => [20, 20, 20],
            Color::Gray => [128, 128, 128],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Cyan => "cyan",
            Color::White => "white",
            Color::Black => "black",
            Color::Gray => "gray",
        }
    }

    pub fn is_object_color(self) -> bool {
        Color::OBJECT.contains(&self)
    }

    fn from_word(w: &str) -> Option<Color> {
        Color::ALL.iter().copied().find(|c| c.name() == w)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
    fn from_word(w: &str) -> Option<Shape> {
        Shape::ALL.iter().copied().find(|s| s.name() == w)
    }
}

/// Object size: small objects are 7–9 units across, large ones 14–16 (a 32-unit canvas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
    fn from_word(w: &str) -> Option<Size> {
        Size::ALL.iter().copied().find(|s| s.name() == w)
    }
}

/// A cell of the 3x3 grid: `gx`, `gy` in 0..3 (0 = left / top).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub gx: u8,
    pub gy: u8,
}

impl Position {
    pub const ALL: [Position; 9] = [
        Position { gx: 0, gy: 0 },
        Position { gx: 1, gy: 0 },
        Position { gx: 2, gy: 0 },
        Position { gx: 0, gy: 1 },
        Position { gx: 1, gy: 1 },
        Position { gx: 2, gy: 1 },
        Position { gx: 0, gy: 2 },
        Position { gx: 1, gy: 2 },
        Position { gx: 2, gy: 2 },
    ];

    pub fn new(gx: u8, gy: u8) -> Option<Position> {
        (gx < 3 && gy < 3).then_some(Position { gx, gy })
    }

    /// "top left", "top", ..., "center", ..., "bottom right".
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 9] = [
            "top left",
            "top",
            "top right",
            "left",
            "center",
            "right",
            "bottom left",
            "bottom",
            "bottom right",
        ];
        NAMES[(self.gy * 3 + self.gx) as usize]
    }

    /// The phrase used in prompts: "in the center" or "at the top left".
    pub fn phrase(self) -> String {
        if self.gx == 1 && self.gy == 1 {
            "in the center".to_string()
        } else {
            format!("at the {}", self.name())
        }
    }

    fn from_name(n: &str) -> Option<Position> {
        Position::ALL.iter().copied().find(|p| p.name() == n)
    }
}

/// Where the first object is relative to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];
    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }
    /// True for left/right (the x axis decides), false for above/below.
    pub fn horizontal(self) -> bool {
        matches!(self, Relation::LeftOf | Relation::RightOf)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Object {
    pub color: Color,
    pub shape: Shape,
}

/// What a prompt asks for. Unspecified attributes (`None`) are free: the renderer picks them
/// and the checker does not judge them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scene {
    One {
        object: Object,
        size: Option<Size>,
        position: Option<Position>,
        background: Option<Color>,
    },
    Two {
        first: Object,
        relation: Relation,
        second: Object,
        background: Option<Color>,
    },
}

impl fmt::Display for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scene::One {
                object,
                size,
                position,
                background,
            } => {
                f.write_str("a ")?;
                if let Some(s) = size {
                    write!(f, "{} ", s.name())?;
                }
                write!(f, "{} {}", object.color.name(), object.shape.name())?;
                if let Some(p) = position {
                    write!(f, " {}", p.phrase())?;
                }
                if let Some(b) = background {
                    write!(f, " on a {} background", b.name())?;
                }
                Ok(())
            }
            Scene::Two {
                first,
                relation,
                second,
                background,
            } => {
                write!(
                    f,
                    "a {} {} {} a {} {}",
                    first.color.name(),
                    first.shape.name(),
                    relation.phrase(),
                    second.color.name(),
                    second.shape.name()
                )?;
                if let Some(b) = background {
                    write!(f, " on a {} background", b.name())?;
                }
                Ok(())
            }
        }
    }
}

fn list<T>(items: &[T], name: impl Fn(&T) -> &'static str) -> String {
    items.iter().map(name).collect::<Vec<_>>().join(", ")
}

struct Parser<'a> {
    prompt: &'a str,
    words: Vec<String>,
    at: usize,
}

impl Parser<'_> {
    fn err(&self, problem: String, fix: String) -> WorldError {
        WorldError::Parse {
            prompt: self.prompt.to_string(),
            problem,
            fix,
        }
    }
    fn peek(&self) -> Option<&str> {
        self.words.get(self.at).map(String::as_str)
    }
    fn found(&self) -> String {
        match self.peek() {
            Some(w) => format!("found `{w}` (word {})", self.at + 1),
            None => "the prompt ended".to_string(),
        }
    }
    fn expect(&mut self, word: &str, context: &str) -> Result<(), WorldError> {
        if self.peek() == Some(word) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.err(
                format!("expected `{word}` {context}, {}", self.found()),
                format!("write `{word}` there (grammar in `dpoimg world prompts --help`)"),
            ))
        }
    }
    fn object_color(&mut self) -> Result<Color, WorldError> {
        match self.peek().and_then(Color::from_word) {
            Some(c) if c.is_object_color() => {
                self.at += 1;
                Ok(c)
            }
            _ => Err(self.err(
                format!("expected an object colour, {}", self.found()),
                format!("use one of {}", list(&Color::OBJECT, |c| c.name())),
            )),
        }
    }
    fn shape(&mut self) -> Result<Shape, WorldError> {
        match self.peek().and_then(Shape::from_word) {
            Some(s) => {
                self.at += 1;
                Ok(s)
            }
            None => Err(self.err(
                format!("expected a shape, {}", self.found()),
                format!("use one of {}", list(&Shape::ALL, |s| s.name())),
            )),
        }
    }
    fn object(&mut self) -> Result<Object, WorldError> {
        let color = self.object_color()?;
        let shape = self.shape()?;
        Ok(Object { color, shape })
    }
    fn background(&mut self) -> Result<Option<Color>, WorldError> {
        if self.peek() != Some("on") {
            return Ok(None);
        }
        self.at += 1;
        self.expect("a", "after `on`")?;
        let c = match self.peek().and_then(Color::from_word) {
            Some(c) => c,
            None => {
                return Err(self.err(
                    format!("expected a background colour, {}", self.found()),
                    format!("use one of {}", list(&Color::ALL, |c| c.name())),
                ))
            }
        };
        self.at += 1;
        self.expect("background", "after the background colour")?;
        Ok(Some(c))
    }
    fn position(&mut self) -> Result<Option<Position>, WorldError> {
        match self.peek() {
            Some("in") => {
                self.at += 1;
                self.expect("the", "after `in`")?;
                self.expect("center", "after `in the`")?;
                Ok(Some(Position { gx: 1, gy: 1 }))
            }
            Some("at") => {
                self.at += 1;
                self.expect("the", "after `at`")?;
                // Longest match first: "top left" before "top".
                let two = match (self.words.get(self.at), self.words.get(self.at + 1)) {
                    (Some(a), Some(b)) => Position::from_name(&format!("{a} {b}")),
                    _ => None,
                };
                if let Some(p) = two {
                    self.at += 2;
                    return Ok(Some(p));
                }
                match self.peek().and_then(Position::from_name) {
                    Some(p) if p != (Position { gx: 1, gy: 1 }) => {
                        self.at += 1;
                        Ok(Some(p))
                    }
                    _ => Err(self.err(
                        format!("expected a position after `at the`, {}", self.found()),
                        "use top left, top, top right, left, right, bottom left, bottom, bottom right (or `in the center`)".into(),
                    )),
                }
            }
            _ => Ok(None),
        }
    }
}

impl Scene {
    /// Parses a prompt of the grammar (module docs). Errors name the word and what was expected.
    pub fn parse(prompt: &str) -> Result<Scene, WorldError> {
        let words: Vec<String> = prompt
            .split_whitespace()
            .map(|w| w.to_lowercase())
            .collect();
        let mut p = Parser {
            prompt,
            words,
            at: 0,
        };
        p.expect("a", "at the start")?;
        let size = p.peek().and_then(Size::from_word);
        if size.is_some() {
            p.at += 1;
        }
        let first = p.object()?;
        let relation = match p.peek() {
            Some("left") | Some("right") => {
                let r = if p.peek() == Some("left") {
                    Relation::LeftOf
                } else {
                    Relation::RightOf
                };
                p.at += 1;
                p.expect("of", "after left/right")?;
                Some(r)
            }
            Some("above") => {
                p.at += 1;
                Some(Relation::Above)
            }
            Some("below") => {
                p.at += 1;
                Some(Relation::Below)
            }
            _ => None,
        };
        let scene = match relation {
            Some(relation) => {
                if size.is_some() {
                    return Err(p.err(
                        "sizes are not part of two-object prompts".into(),
                        "drop the size word".into(),
                    ));
                }
                p.expect("a", "before the second object")?;
                let second = p.object()?;
                let background = p.background()?;
                Scene::Two {
                    first,
                    relation,
                    second,
                    background,
                }
            }
            None => {
                let position = p.position()?;
                let background = p.background()?;
                Scene::One {
                    object: first,
                    size,
                    position,
                    background,
                }
            }
        };
        if p.at < p.words.len() {
            return Err(p.err(
                format!("unexpected `{}` (word {})", p.words[p.at], p.at + 1),
                "end the prompt after the object, position and background phrases".into(),
            ));
        }
        scene.validate().map_err(|problem| WorldError::Parse {
            prompt: prompt.to_string(),
            problem,
            fix:
                "choose a background that differs from the objects and two different object colours"
                    .into(),
        })?;
        Ok(scene)
    }

    /// Checks the colour constraints (see module docs); `Err` says which one is broken.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Scene::One {
                object, background, ..
            } => {
                if !object.color.is_object_color() {
                    return Err(format!("{} is not an object colour", object.color.name()));
                }
                if *background == Some(object.color) {
                    return Err(format!(
                        "the object and the background are both {}",
                        object.color.name()
                    ));
                }
            }
            Scene::Two {
                first,
                second,
                background,
                ..
            } => {
                for o in [first, second] {
                    if !o.color.is_object_color() {
                        return Err(format!("{} is not an object colour", o.color.name()));
                    }
                    if *background == Some(o.color) {
                        return Err(format!(
                            "an object and the background are both {}",
                            o.color.name()
                        ));
                    }
                }
                if first.color == second.color {
                    return Err(format!(
                        "both objects are {}: the checker tells objects apart by colour",
                        first.color.name()
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn background(&self) -> Option<Color> {
        match self {
            Scene::One { background, .. } | Scene::Two { background, .. } => *background,
        }
    }

    /// The object colours of the scene.
    pub fn object_colors(&self) -> Vec<Color> {
        match self {
            Scene::One { object, .. } => vec![object.color],
            Scene::Two { first, second, .. } => vec![first.color, second.color],
        }
    }
}

/// Dataset split of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    pub fn from_name(n: &str) -> Option<Split> {
        Split::ALL.iter().copied().find(|s| s.name() == n)
    }

    /// The split of a prompt: 80 / 10 / 10 % by a hash of its canonical text (parsed and
    /// re-printed when it is in the grammar, so spacing and case do not matter). A function of the
    /// text alone, so however prompts are sampled or grouped, one prompt is never in two splits.
    pub fn of_prompt(prompt: &str) -> Split {
        let canonical = match Scene::parse(prompt) {
            Ok(s) => s.to_string(),
            Err(_) => prompt.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        let digest =
            crate::hash::sha256_hex(format!("dpoimg-world-split-v1:{canonical}").as_bytes());
        let v = u64::from_str_radix(&digest[..16], 16).unwrap_or(0);
        match v % 10 {
            0..=7 => Split::Train,
            8 => Split::Validation,
            _ => Split::Test,
        }
    }
}

/// Draws scenes deterministically: scene `i` depends only on (`seed`, `i`) and the
/// probabilities, not on what was drawn before.
#[derive(Debug, Clone)]
pub struct PromptSampler {
    pub seed: u64,
    /// Probability of a two-object scene.
    pub two_prob: f64,
    /// Probabilities that a one-object prompt names the size, the position, the background.
    pub p_size: f64,
    pub p_position: f64,
    /// Probability that a prompt names the background (both kinds).
    pub p_background: f64,
}

impl Default for PromptSampler {
    /// The study's mix: 20 % two-object prompts; size and position each named in 60 % of
    /// one-object prompts, the background in 85 % of all prompts.
    fn default() -> Self {
        PromptSampler {
            seed: 0,
            two_prob: 0.2,
            p_size: 0.6,
            p_position: 0.6,
            p_background: 0.85,
        }
    }
}

const SCENE_STREAM: u64 = 1;

impl PromptSampler {
    pub fn with_seed(seed: u64) -> Self {
        PromptSampler {
            seed,
            ..Default::default()
        }
    }

    fn check_options(&self) -> Result<(), WorldError> {
        for (name, v) in [
            ("two_prob", self.two_prob),
            ("p_size", self.p_size),
            ("p_position", self.p_position),
            ("p_background", self.p_background),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(WorldError::Option {
                    name: name.into(),
                    value: v.to_string(),
                    problem: "a probability must be in 0..=1".into(),
                });
            }
        }
        Ok(())
    }

    /// Scene number `index`.
    pub fn scene(&self, index: u64) -> Scene {
        let mut r = WorldRng::for_item(self.seed, SCENE_STREAM, index);
        if r.bernoulli(self.two_prob) {
            let a = r.choose(&Color::OBJECT);
            let others: Vec<Color> = Color::OBJECT.iter().copied().filter(|&c| c != a).collect();
            let b = r.choose(&others);
            let first = Object {
                color: a,
                shape: r.choose(&Shape::ALL),
            };
            let relation = r.choose(&Relation::ALL);
            let second = Object {
                color: b,
                shape: r.choose(&Shape::ALL),
            };
            let bgs: Vec<Color> = Color::ALL
                .iter()
                .copied()
                .filter(|&c| c != a && c != b)
                .collect();
            let bg = r.choose(&bgs);
            let background = r.bernoulli(self.p_background).then_some(bg);
            Scene::Two {
                first,
                relation,
                second,
                background,
            }
        } else {
            let color = r.choose(&Color::OBJECT);
            let shape = r.choose(&Shape::ALL);
            let size = r.choose(&Size::ALL);
            let pos = r.choose(&Position::ALL);
            let bgs: Vec<Color> = Color::ALL.iter().copied().filter(|&c| c != color).collect();
            let bg = r.choose(&bgs);
            Scene::One {
                object: Object { color, shape },
                size: r.bernoulli(self.p_size).then_some(size),
                position: r.bernoulli(self.p_position).then_some(pos),
                background: r.bernoulli(self.p_background).then_some(bg),
            }
        }
    }

    /// `count` distinct scenes (by prompt text) of `split` (any split when `None`), in order of
    /// scene index. Fails when the grammar cannot supply that many distinct prompts.
    pub fn distinct(&self, split: Option<Split>, count: usize) -> Result<Vec<Scene>, WorldError> {
        self.check_options()?;
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(count);
        // The grammar has about 13,500 prompts, some rare: give up once 100,000 draws in a row
        // bring nothing new.
        const STALL: u64 = 100_000;
        let mut last_new = 0u64;
        let mut i = 0u64;
        while out.len() < count {
            if i - last_new >= STALL {
                return Err(WorldError::Option {
                    name: "count".into(),
                    value: count.to_string(),
                    problem: format!(
                        "only {} distinct prompts found ({STALL} draws in a row brought no new one); ask for fewer",
                        out.len()
                    ),
                });
            }
            let s = self.scene(i);
            i += 1;
            let text = s.to_string();
            if split.is_some_and(|sp| Split::of_prompt(&text) != sp) {
                continue;
            }
            if seen.insert(text) {
                out.push(s);
                last_new = i;
            }
        }
        Ok(out)
    }
}
