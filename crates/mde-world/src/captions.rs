//! Five varied captions per image, written from the ground truth (COCO has five per image too).
//! Captions 1, 2, 4 and 5 name every object (colour + shape); caption 3 places each one.
use crate::questions::join_list;
use crate::scene::{BackgroundKind, Object, Quality, Scene};

/// "one".."eight" (digits beyond).
pub fn number_word(n: usize) -> String {
    const W: [&str; 9] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    ];
    W.get(n)
        .map(|s| s.to_string())
        .unwrap_or_else(|| n.to_string())
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn with_article(s: &str) -> String {
    format!("{} {}", article(s), s)
}

fn background_phrase(scene: &Scene) -> String {
    let t = scene.background.tint.name();
    match scene.background.kind {
        BackgroundKind::Plain => format!("a plain {t} background"),
        BackgroundKind::Gradient => format!("{} gradient background", with_article(t)),
        BackgroundKind::Stripes => format!("a striped {t} background"),
        BackgroundKind::Checkerboard => format!("{} checkerboard background", with_article(t)),
    }
}

/// Coarse region of an object's centre in a 3x3 grid, e.g. "top left", "center".
pub fn region(o: &Object, width: u32, height: u32) -> String {
    let h = match (o.cx / width as f64 * 3.0) as usize {
        0 => "left",
        1 => "center",
        _ => "right",
    };
    let v = match (o.cy / height as f64 * 3.0) as usize {
        0 => "top",
        1 => "middle",
        _ => "bottom",
    };
    match (v, h) {
        ("middle", "center") => "center".into(),
        ("middle", h) => format!("{h} side"),
        (v, "center") => v.to_string(),
        (v, h) => format!("{v} {h}"),
    }
}

/// The five captions of a scene.
pub fn captions(scene: &Scene) -> Vec<String> {
    let objs = &scene.objects;
    let n = objs.len();
    let full: Vec<String> = objs.iter().map(|o| with_article(&o.full_name())).collect();
    let cats: Vec<String> = objs.iter().map(|o| with_article(&o.category())).collect();
    let bg = background_phrase(scene);
    let shape_word = if n == 1 { "shape" } else { "shapes" };
    let c1 = format!("An image of {} on {}.", join_list(&full), bg);
    let c2 = format!(
        "There {} {} {} in this picture: {}.",
        if n == 1 { "is" } else { "are" },
        number_word(n),
        shape_word,
        join_list(&cats)
    );
    let placed: Vec<String> = objs
        .iter()
        .map(|o| {
            let r = region(o, scene.width, scene.height);
            let prep = if r == "center" { "in the" } else { "at the" };
            format!("{} {prep} {r}", with_article(&o.category()))
        })
        .collect();
    let c3 = capitalise_first(&format!("{} of the image.", join_list(&placed)));
    let q = match scene.quality {
        Quality::Clean => "A clean, sharp picture",
        Quality::Blurry => "A blurry, out of focus picture",
        Quality::Dark => "A dark, dimly lit picture",
        Quality::Noisy => "A noisy, grainy picture",
    };
    let c4 = format!("{q} of {}.", join_list(&cats));
    let large: Vec<String> = objs
        .iter()
        .filter(|o| o.size == crate::scene::Size::Large)
        .map(|o| o.category())
        .collect();
    let small: Vec<String> = objs
        .iter()
        .filter(|o| o.size == crate::scene::Size::Small)
        .map(|o| o.category())
        .collect();
    let mut parts = vec![];
    if !large.is_empty() {
        parts.push(format!("large {}", join_list(&large)));
    }
    if !small.is_empty() {
        parts.push(format!("small {}", join_list(&small)));
    }
    let c5 = format!(
        "{} simple geometric {} drawn over {}: {}.",
        capitalise_first(&number_word(n)),
        shape_word,
        bg.trim_start_matches("a ").trim_start_matches("an "),
        parts.join(" and ")
    );
    vec![c1, c2, c3, c4, c5]
}

fn capitalise_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
