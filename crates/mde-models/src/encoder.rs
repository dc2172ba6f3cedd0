//! The image encoder of the sampler: a MiniGPT-4's own Q-Former turns an image into the
//! embedding that the similarity half of ABS searches ([`mde_abs::ImageEncoder`]), for the
//! loop's index step, `mde index` and the sample step's in-context examples.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use mde_abs::ImageEncoder;
use mde_core::model::ImageInput;
use mde_core::records::{BenchItem, ImageRef};
use mde_eval::runner::ImageLoader;
use minigpt4::preprocess::{decode_rgb, ImageProcessor};
use minigpt4::MiniGpt4;

/// Image embeddings from the model's own Q-Former (mean over the query tokens), used for the
/// similarity half of ABS. COCO ids resolve through the pool folder and file pattern; paths
/// through `root` (the benchmark's image folder) when relative.
pub struct ModelEncoder<'a> {
    model: &'a MiniGpt4,
    proc: ImageProcessor,
    pool_images: PathBuf,
    pattern: String,
    root: Option<PathBuf>,
}

impl<'a> ModelEncoder<'a> {
    pub fn new(
        model: &'a MiniGpt4,
        pool_images: PathBuf,
        pattern: String,
        root: Option<PathBuf>,
    ) -> Self {
        let size = model.vision.cfg.image_size as u32;
        Self {
            model,
            proc: ImageProcessor::eval(size),
            pool_images,
            pattern,
            root,
        }
    }

    fn load(
        &self,
        r: &ImageRef,
    ) -> std::result::Result<image::RgbImage, mde_abs::index::EncoderError> {
        let item = BenchItem {
            id: "image".into(),
            image: match r {
                ImageRef::Coco { image_id } => ImageRef::Path {
                    path: self
                        .pool_images
                        .join(mde_train::data::image_file_name(&self.pattern, *image_id))
                        .display()
                        .to_string(),
                },
                other => other.clone(),
            },
            ..Default::default()
        };
        let input = ImageLoader::new(self.root.clone()).load(&item)?;
        match input {
            ImageInput::Encoded { data } => Ok(decode_rgb(&data)?),
            ImageInput::Rgb {
                width,
                height,
                data,
            } => image::RgbImage::from_raw(width, height, data)
                .ok_or_else(|| "RGB buffer does not match its size".into()),
        }
    }
}

impl ImageEncoder for ModelEncoder<'_> {
    fn embed(
        &self,
        images: &[ImageRef],
    ) -> std::result::Result<Vec<Vec<f32>>, mde_abs::index::EncoderError> {
        let imgs = images
            .iter()
            .map(|r| self.load(r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let dev = self.model.device();
        let px = self.proc.process_batch_eval(&imgs, dev)?;
        let px = px.to_dtype(self.model.dtype())?;
        let f: Tensor = self
            .model
            .qformer_features(&px)?
            .mean(1)?
            .to_dtype(DType::F32)?;
        Ok(f.to_vec2::<f32>()?)
    }
}
