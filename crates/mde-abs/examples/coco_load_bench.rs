//! Load time and peak memory of `AnnotationDb::load_instances` on a generated COCO instances
//! file the size of `instances_train2017.json` (~450 MB, polygons included).
//!
//! `cargo run --release -p mde-abs --example coco_load_bench -- [IMAGES] [ANNOTATIONS]`
//! (defaults 118287 images, 860001 annotations). The file is written to a temp dir and deleted;
//! loading runs in a fresh child process so its peak RSS (VmHWM) is the loader's alone.
use mde_abs::AnnotationDb;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::time::Instant;

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn generate(path: &std::path::Path, n_images: usize, n_ann: usize) -> anyhow::Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    write!(
        w,
        r#"{{"info": {{"description": "generated", "year": 2017}}, "licenses": [{{"id": 1, "name": "x", "url": "y"}}], "images": ["#
    )?;
    for i in 0..n_images {
        let sep = if i == 0 { "" } else { ", " };
        write!(
            w,
            r#"{sep}{{"license": 1, "file_name": "{:012}.jpg", "coco_url": "http://images.cocodataset.org/train2017/{:012}.jpg", "height": 480, "width": 640, "date_captured": "2013-11-14 16:28:13", "flickr_url": "http://farm4.staticflickr.com/1/x.jpg", "id": {}}}"#,
            i + 1,
            i + 1,
            i + 1
        )?;
    }
    write!(w, r#"], "annotations": ["#)?;
    for a in 0..n_ann {
        let sep = if a == 0 { "" } else { ", " };
        // Real polygons average ~50 coordinates with 2 decimals.
        let n_pts = rng.random_range(16..=36) * 2;
        let mut poly = String::with_capacity(n_pts * 8);
        for p in 0..n_pts {
            if p > 0 {
                poly.push(',');
            }
            poly.push_str(&format!("{:.2}", rng.random::<f64>() * 600.0));
        }
        write!(
            w,
            r#"{sep}{{"segmentation": [[{poly}]], "area": {:.4}, "iscrowd": 0, "image_id": {}, "bbox": [{:.2}, {:.2}, {:.2}, {:.2}], "category_id": {}, "id": {}}}"#,
            rng.random::<f64>() * 50000.0,
            rng.random_range(1..=n_images),
            rng.random::<f64>() * 300.0,
            rng.random::<f64>() * 200.0,
            rng.random::<f64>() * 300.0,
            rng.random::<f64>() * 200.0,
            rng.random_range(1..=80u32),
            a + 1
        )?;
    }
    write!(w, r#"], "categories": ["#)?;
    for c in 1..=80 {
        let sep = if c == 1 { "" } else { ", " };
        write!(
            w,
            r#"{sep}{{"supercategory": "thing", "id": {c}, "name": "category{c}"}}"#
        )?;
    }
    write!(w, "]}}")?;
    w.flush()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        let path = &args[2];
        let t = Instant::now();
        let db = AnnotationDb::load_instances(path)?;
        let secs = t.elapsed().as_secs_f64();
        let objects: usize = db.ids().iter().map(|id| db.object_count(*id)).sum();
        println!(
            "loaded {} images, {objects} objects in {secs:.2}s; peak RSS {:.0} MB",
            db.len(),
            peak_rss_mb()
        );
        return Ok(());
    }
    let n_images: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(118_287);
    let n_ann: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(860_001);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("instances_generated.json");
    let t = Instant::now();
    generate(&path, n_images, n_ann)?;
    let size = std::fs::metadata(&path)?.len();
    println!(
        "generated {} MB in {:.1}s",
        size / 1_000_000,
        t.elapsed().as_secs_f64()
    );
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--load")
        .arg(&path)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "loader failed");
    Ok(())
}
