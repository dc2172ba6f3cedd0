//! Deterministic rasteriser: background pattern, 4x4-supersampled (anti-aliased) shapes, then the
//! quality degradation. Pure arithmetic on `f32` plus a ChaCha stream for noise, so the same
//! [`Scene`] always gives the same bytes.
use crate::scene::{polygon, BackgroundKind, Quality, Scene, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An RGB8 image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Supersampling grid per pixel side.
const SS: usize = 4;

fn inside_polygon(poly: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Renders a scene to RGB8.
pub fn render(scene: &Scene) -> Rgb8 {
    let (w, h) = (scene.width as usize, scene.height as usize);
    let mut rng = ChaCha8Rng::seed_from_u64(scene.noise_seed);
    let mut buf = vec![0f32; w * h * 3];
    let bg = &scene.background;
    let tint = bg.tint.rgb();
    let (dx, dy) = {
        let a = (bg.angle as f64).to_radians();
        (a.cos(), a.sin())
    };
    // Projection range of the image onto the gradient direction, to map it to 0..1.
    let corners = [
        (0.0, 0.0),
        (w as f64, 0.0),
        (0.0, h as f64),
        (w as f64, h as f64),
    ];
    let pmin = corners
        .iter()
        .map(|(x, y)| x * dx + y * dy)
        .fold(f64::MAX, f64::min);
    let pmax = corners
        .iter()
        .map(|(x, y)| x * dx + y * dy)
        .fold(f64::MIN, f64::max);
    let period = bg.period.max(1) as f64;
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            let factor = match bg.kind {
                BackgroundKind::Plain => 1.0,
                BackgroundKind::Gradient => {
                    let t = ((fx * dx + fy * dy) - pmin) / (pmax - pmin);
                    1.0 - (bg.contrast + 0.05) * t
                }
                BackgroundKind::Stripes => {
                    let u = fx * dx + fy * dy - pmin;
                    if ((u / period).floor() as i64) % 2 == 0 {
                        1.0
                    } else {
                        1.0 - bg.contrast
                    }
                }
                BackgroundKind::Checkerboard => {
                    let cx = (x as f64 / period).floor() as i64;
                    let cy = (y as f64 / period).floor() as i64;
                    if (cx + cy) % 2 == 0 {
                        1.0
                    } else {
                        1.0 - bg.contrast
                    }
                }
            } as f32;
            let i = (y * w + x) * 3;
            for c in 0..3 {
                // Light sensor-like noise on every image keeps backgrounds from being trivially flat.
                let n: f32 = rng.random_range(-5.0..5.0);
                buf[i + c] = tint[c] * factor + n;
            }
        }
    }
    for o in &scene.objects {
        let poly = polygon(o.shape, o.cx, o.cy, o.r);
        let col = o.color.rgb();
        let x0 = (o.bbox[0].floor() as i64 - 1).max(0) as usize;
        let y0 = (o.bbox[1].floor() as i64 - 1).max(0) as usize;
        let x1 = ((o.bbox[0] + o.bbox[2]).ceil() as usize + 1).min(w);
        let y1 = ((o.bbox[1] + o.bbox[3]).ceil() as usize + 1).min(h);
        for y in y0..y1 {
            for x in x0..x1 {
                let mut hits = 0;
                for sy in 0..SS {
                    for sx in 0..SS {
                        let px = x as f64 + (sx as f64 + 0.5) / SS as f64;
                        let py = y as f64 + (sy as f64 + 0.5) / SS as f64;
                        let inside = match (&poly, o.shape) {
                            (None, _) | (_, Shape::Circle) => {
                                (px - o.cx).powi(2) + (py - o.cy).powi(2) <= o.r * o.r
                            }
                            (Some(p), _) => inside_polygon(p, px, py),
                        };
                        hits += inside as usize;
                    }
                }
                if hits > 0 {
                    let a = hits as f32 / (SS * SS) as f32;
                    let i = (y * w + x) * 3;
                    for c in 0..3 {
                        buf[i + c] = buf[i + c] * (1.0 - a) + col[c] * a;
                    }
                }
            }
        }
    }
    match scene.quality {
        Quality::Clean => {}
        Quality::Blurry => {
            let r = (scene.width as usize / 32).max(1);
            for _ in 0..2 {
                box_blur(&mut buf, w, h, r);
            }
        }
        Quality::Dark => buf.iter_mut().for_each(|v| *v *= 0.30),
        Quality::Noisy => buf
            .iter_mut()
            .for_each(|v| *v += rng.random_range(-55.0f32..55.0)),
    }
    let data = buf
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    Rgb8 {
        width: scene.width,
        height: scene.height,
        data,
    }
}

/// Separable box blur with clamped edges.
fn box_blur(buf: &mut [f32], w: usize, h: usize, r: usize) {
    let mut tmp = vec![0f32; buf.len()];
    let n = (2 * r + 1) as f32;
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0.0;
                for k in 0..=2 * r {
                    let xx = (x + k).saturating_sub(r).min(w - 1);
                    s += buf[(y * w + xx) * 3 + c];
                }
                tmp[(y * w + x) * 3 + c] = s / n;
            }
        }
    }
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0.0;
                for k in 0..=2 * r {
                    let yy = (y + k).saturating_sub(r).min(h - 1);
                    s += tmp[(yy * w + x) * 3 + c];
                }
                buf[(y * w + x) * 3 + c] = s / n;
            }
        }
    }
}

/// Encodes RGB8 as PNG.
pub fn encode_png(img: &Rgb8) -> Result<Vec<u8>, image::ImageError> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out).write_image(
        &img.data,
        img.width,
        img.height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

/// Encodes RGB8 as baseline JPEG of the given quality.
pub fn encode_jpeg(img: &Rgb8, quality: u8) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode(
        &img.data,
        img.width,
        img.height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

/// Decodes any PNG/JPEG bytes to RGB8 (format sniffed from the content).
pub fn decode(bytes: &[u8]) -> Result<Rgb8, image::ImageError> {
    let img = image::load_from_memory(bytes)?.to_rgb8();
    Ok(Rgb8 {
        width: img.width(),
        height: img.height(),
        data: img.into_raw(),
    })
}
