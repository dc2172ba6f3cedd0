//! Sampler behaviour: allocation, image alternation and top-K rule, no reuse, object limit,
//! exhaustion, reproducibility.
use mde_abs::sampler::is_similar_query;
use mde_abs::{
    allocate, sample, AnnotationDb, BadCasePool, ImageIndex, SampleInputs, SamplerConfig, Strategy,
};
use mde_core::records::{coco, BadCase, ImageRef, TypeWeights};
use mde_core::taxonomy::{QuestionType, Taxonomy};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};

fn taxonomy() -> Taxonomy {
    let types = ["alpha", "beta", "gamma", "delta", "eps"]
        .iter()
        .map(|id| QuestionType {
            id: id.to_string(),
            name: id.to_uppercase(),
            definition: format!("About {id}."),
        })
        .collect();
    Taxonomy::new("test", types).unwrap()
}

/// `n_per_type` bad cases per type, with images Coco{1_000_000 + k}.
fn cases(counts: &[(&str, usize)], n_choices: usize) -> Vec<BadCase> {
    let mut out = Vec::new();
    let mut k = 0;
    for (t, n) in counts {
        for j in 0..*n {
            out.push(BadCase {
                id: format!("{t}-{j}"),
                benchmark: "test".into(),
                question: format!("Question {j} about {t}?"),
                choices: (0..n_choices).map(|c| format!("choice {c}")).collect(),
                answer_idx: j % n_choices,
                model_answer: "wrong".into(),
                image: ImageRef::Coco {
                    image_id: 1_000_000 + k,
                },
                question_type: Some(t.to_string()),
            });
            k += 1;
        }
    }
    out
}

/// Images 1..=n; image i has `objects(i)` objects.
fn db(n: u64, objects: impl Fn(u64) -> usize) -> AnnotationDb {
    let images = (1..=n)
        .map(|id| coco::Image {
            id,
            file_name: format!("{id:012}.jpg"),
            width: 200,
            height: 100,
        })
        .collect();
    let mut annotations = Vec::new();
    for id in 1..=n {
        for o in 0..objects(id) {
            annotations.push(coco::Annotation {
                id: annotations.len() as u64,
                image_id: id,
                category_id: 1 + (o as u64 % 2),
                bbox: [10.0, 10.0, 20.0, 30.0],
                ..Default::default()
            });
        }
    }
    let categories = vec![
        coco::Category {
            id: 1,
            name: "cat".into(),
            supercategory: String::new(),
        },
        coco::Category {
            id: 2,
            name: "dog".into(),
            supercategory: String::new(),
        },
    ];
    let caps = coco::Captions {
        images: vec![],
        annotations: (1..=n)
            .map(|id| coco::Caption {
                id,
                image_id: id,
                caption: format!("Image {id}."),
            })
            .collect(),
    };
    AnnotationDb::from_coco(
        &coco::Instances {
            images,
            annotations,
            categories,
        },
        Some(&caps),
    )
    .unwrap()
}

fn weights(pairs: &[(&str, f64)]) -> TypeWeights {
    TypeWeights {
        weights: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        stats: BTreeMap::new(),
    }
}

fn random_index(ids: Vec<u64>, d: usize, seed: u64) -> ImageIndex {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let rows: Vec<Vec<f32>> = ids
        .iter()
        .map(|_| (0..d).map(|_| rng.random::<f32>() - 0.5).collect())
        .collect();
    ImageIndex::from_rows(ids, &rows).unwrap()
}

#[test]
fn type_counts_follow_the_weights() {
    let tax = taxonomy();
    // delta has one bad case only: skipped. eps has no weight: skipped under error_rate.
    let (pool, _) = BadCasePool::new(
        cases(
            &[
                ("alpha", 5),
                ("beta", 3),
                ("gamma", 2),
                ("delta", 1),
                ("eps", 4),
            ],
            4,
        ),
        &tax,
    )
    .unwrap();
    let w = weights(&[
        ("alpha", 0.2),
        ("beta", 0.5),
        ("GAMMA", 0.8),
        ("delta", 0.9),
        ("unknown", 0.3),
    ]);
    let n = 20_000;
    let images = db(n as u64, |_| 1);
    let inputs = SampleInputs {
        pool: &pool,
        weights: &w,
        taxonomy: &tax,
        images: &images,
        index: None,
        examples: None,
    };
    let cfg = SamplerConfig {
        n_queries: n,
        seed: 7,
        similar_ratio: 0.0,
        ..Default::default()
    };
    let (queries, report) = sample(&inputs, &cfg).unwrap();
    assert_eq!(queries.len(), n);
    assert!(report.stop_reason.is_none());
    assert!(report.allocation.skipped.contains_key("delta"));
    assert!(report.allocation.skipped.contains_key("eps"));
    assert!(report.allocation.skipped.contains_key("unknown"));
    let total: f64 = [0.2, 0.5, 0.8].iter().sum();
    for (t, wt) in [("alpha", 0.2), ("beta", 0.5), ("gamma", 0.8)] {
        let p = wt / total;
        assert!((report.allocation.probabilities[t] - p).abs() < 1e-12);
        let got = queries.iter().filter(|q| q.question_type == t).count() as f64;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (got - n as f64 * p).abs() < 5.0 * sigma,
            "{t}: {got} vs {}",
            n as f64 * p
        );
        assert_eq!(report.per_type[t] as f64, got);
    }
    // Examples: 2 distinct cases of the query's type, carrying the ground truth.
    for q in &queries {
        assert_eq!(q.examples.len(), 2);
        assert_ne!(q.examples[0].source_id, q.examples[1].source_id);
        for ex in &q.examples {
            assert!(ex.source_id.starts_with(&q.question_type));
            assert_eq!(ex.question_type, q.question_type);
            let j: usize = ex.source_id.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(ex.answer_idx, j % 4);
        }
        assert_eq!(
            q.type_definition,
            tax.by_id(&q.question_type).unwrap().definition
        );
        assert!(!q.similar);
    }
    // Each of alpha's 5 cases is used as an example about equally often (uniform choice).
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for q in queries.iter().filter(|q| q.question_type == "alpha") {
        for ex in &q.examples {
            *uses.entry(ex.source_id.clone()).or_default() += 1;
        }
    }
    let n_alpha = report.per_type["alpha"] as f64;
    for (_, u) in uses {
        // each case appears in a query with probability 2/5
        let p = 0.4;
        assert!((u as f64 - n_alpha * p).abs() < 5.0 * (n_alpha * p * (1.0 - p)).sqrt());
    }
}

#[test]
fn strategies_floor_and_quotas() {
    let tax = taxonomy();
    let (pool, _) = BadCasePool::new(
        cases(&[("alpha", 2), ("beta", 2), ("gamma", 2), ("delta", 2)], 4),
        &tax,
    )
    .unwrap();
    let w = weights(&[
        ("alpha", 0.9),
        ("beta", 0.75),
        ("gamma", 0.5),
        ("delta", 0.85),
    ]);
    let base = SamplerConfig::default();

    let uni = allocate(
        &pool,
        &w,
        &tax,
        &SamplerConfig {
            strategy: Strategy::Uniform,
            ..base.clone()
        },
    )
    .unwrap();
    assert!(uni.probabilities.values().all(|p| (p - 0.25).abs() < 1e-12));

    // Chance error for 4 choices is 0.75: alpha (worse than chance) and beta (at chance) are
    // skipped, and so is delta (0.71, within the 0.05 margin); gamma (0.5) and eps (0.3) are
    // learnable and weighted by (err / 0.75)^2.
    let w6 = weights(&[
        ("alpha", 0.9),
        ("beta", 0.75),
        ("gamma", 0.5),
        ("delta", 0.71),
        ("eps", 0.3),
    ]);
    let (pool6, _) = BadCasePool::new(
        cases(
            &[
                ("alpha", 2),
                ("beta", 2),
                ("gamma", 2),
                ("delta", 2),
                ("eps", 2),
            ],
            4,
        ),
        &tax,
    )
    .unwrap();
    let cd = SamplerConfig {
        strategy: Strategy::ChanceDiscounted { power: 2.0 },
        ..base.clone()
    };
    let a = allocate(&pool6, &w6, &tax, &cd).unwrap();
    for t in ["alpha", "beta", "delta"] {
        assert!(a.skipped.contains_key(t), "{t}: {a:?}");
    }
    let (wg, we) = ((0.5f64 / 0.75).powi(2), (0.3f64 / 0.75).powi(2));
    assert_eq!(a.probabilities.len(), 2);
    assert!((a.probabilities["gamma"] - wg / (wg + we)).abs() < 1e-9);
    assert!((a.probabilities["eps"] - we / (wg + we)).abs() < 1e-9);
    // A zero margin keeps delta.
    let a0 = allocate(
        &pool6,
        &w6,
        &tax,
        &SamplerConfig {
            chance_margin: 0.0,
            ..cd.clone()
        },
    )
    .unwrap();
    assert!(a0.probabilities.contains_key("delta"));
    // With 2 choices the chance error is 0.5: gamma (0.5) is at chance and only eps is left (a
    // 0.3 error there is 0.6 of the way to guessing).
    let a2 = allocate(
        &pool6,
        &w6,
        &tax,
        &SamplerConfig {
            n_choices: Some(2),
            ..cd.clone()
        },
    )
    .unwrap();
    assert_eq!(a2.probabilities.keys().collect::<Vec<_>>(), ["eps"]);
    // A measured chance accuracy (e.g. a blind model's) above 1/4 raises the chance level:
    // gamma measured at 0.5 is at chance, eps's weight is discounted by 0.6 instead of 0.75. A
    // measured level below 1/n_choices does not lower it (delta stays skipped), and the levels
    // used are reported.
    let measured = SamplerConfig {
        chance_accuracy: [("gamma", 0.5), ("eps", 0.4), ("delta", 0.1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..cd.clone()
    };
    let am = allocate(&pool6, &w6, &tax, &measured).unwrap();
    assert_eq!(am.probabilities.keys().collect::<Vec<_>>(), ["eps"]);
    assert!(am.skipped["gamma"].contains("chance"), "{am:?}");
    assert!(am.skipped.contains_key("delta"));
    assert_eq!(am.chance["gamma"], 0.5);
    assert_eq!(am.chance["eps"], 0.4);
    assert_eq!(am.chance["delta"], 0.25);
    assert_eq!(am.chance["alpha"], 0.25);
    // Next to a type at the uniform level, eps weighs (0.3 / 0.6)^2.
    let wb = weights(&[("beta", 0.6), ("eps", 0.3)]);
    let (poolb, _) = BadCasePool::new(cases(&[("beta", 2), ("eps", 2)], 4), &tax).unwrap();
    let ab = allocate(&poolb, &wb, &tax, &measured).unwrap();
    let (w_beta, w_eps) = ((0.6f64 / 0.75).powi(2), (0.3f64 / 0.6).powi(2));
    assert!((ab.probabilities["beta"] - w_beta / (w_beta + w_eps)).abs() < 1e-9);
    assert!((ab.probabilities["eps"] - w_eps / (w_beta + w_eps)).abs() < 1e-9);
    // Out-of-range measurements and unknown types are reported, not silently used.
    let bad = SamplerConfig {
        chance_accuracy: [("eps".to_string(), 1.5)].into_iter().collect(),
        ..cd.clone()
    };
    assert!(allocate(&pool6, &w6, &tax, &bad).is_err());
    let unknown = SamplerConfig {
        chance_accuracy: [("no_such_type".to_string(), 0.5)].into_iter().collect(),
        ..cd.clone()
    };
    let au = allocate(&pool6, &w6, &tax, &unknown).unwrap();
    assert!(au.skipped["no_such_type"].contains("taxonomy"));
    assert!(allocate(
        &pool6,
        &w6,
        &tax,
        &SamplerConfig {
            chance_margin: 1.0,
            ..cd.clone()
        },
    )
    .is_err());

    let sm = allocate(
        &pool,
        &w,
        &tax,
        &SamplerConfig {
            strategy: Strategy::Softmax { temperature: 0.1 },
            ..base.clone()
        },
    )
    .unwrap();
    let z: f64 = [0.9f64, 0.75, 0.5, 0.85]
        .iter()
        .map(|e| (e / 0.1).exp())
        .sum();
    assert!((sm.probabilities["gamma"] - (0.5f64 / 0.1).exp() / z).abs() < 1e-9);

    let fl = allocate(
        &pool,
        &w,
        &tax,
        &SamplerConfig {
            floor: 0.8,
            ..base.clone()
        },
    )
    .unwrap();
    let t: f64 = 0.9 + 0.8 + 0.8 + 0.85;
    assert!((fl.probabilities["gamma"] - 0.8 / t).abs() < 1e-12);

    // Quotas cap a type; the rest is renormalised and the run still reaches n.
    let images = db(400, |_| 1);
    let inputs = SampleInputs {
        pool: &pool,
        weights: &w,
        taxonomy: &tax,
        images: &images,
        index: None,
        examples: None,
    };
    let mut quotas = BTreeMap::new();
    quotas.insert("ALPHA".to_string(), 10);
    let cfg = SamplerConfig {
        n_queries: 300,
        seed: 3,
        similar_ratio: 0.0,
        quotas,
        ..base.clone()
    };
    let (q, r) = sample(&inputs, &cfg).unwrap();
    assert_eq!(q.len(), 300);
    assert_eq!(r.per_type["alpha"], 10);
    // Every type capped: stops with a reason.
    let quotas: BTreeMap<String, usize> = ["alpha", "beta", "gamma", "delta"]
        .iter()
        .map(|t| (t.to_string(), 5))
        .collect();
    let (q, r) = sample(
        &inputs,
        &SamplerConfig {
            quotas,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_eq!(q.len(), 20);
    assert!(r.stop_reason.unwrap().contains("quota"));

    assert_eq!(
        "softmax:0.5".parse::<Strategy>().unwrap(),
        Strategy::Softmax { temperature: 0.5 }
    );
    assert_eq!("released".parse::<Strategy>().unwrap(), Strategy::ErrorRate);
    assert_eq!(
        "chance_discounted".parse::<Strategy>().unwrap(),
        Strategy::ChanceDiscounted { power: 1.0 }
    );
    assert!("softmax".parse::<Strategy>().is_err() && "bogus".parse::<Strategy>().is_err());
}

#[test]
fn alternation_top_k_no_reuse_and_object_limit() {
    let tax = taxonomy();
    let (pool, _) = BadCasePool::new(cases(&[("alpha", 3)], 4), &tax).unwrap();
    let w = weights(&[("alpha", 0.5)]);
    // Images 1..=300; every third image has 11 objects (rejected), others 1..=10.
    let n_img = 300u64;
    let images = db(n_img, |id| {
        if id % 3 == 0 {
            11
        } else {
            (id % 10 + 1) as usize
        }
    });
    // The index covers the candidates and the example images (ids 1_000_000..).
    let mut ids: Vec<u64> = (1..=n_img).collect();
    ids.extend(1_000_000..1_000_003);
    let index = random_index(ids, 8, 11);
    let inputs = SampleInputs {
        pool: &pool,
        weights: &w,
        taxonomy: &tax,
        images: &images,
        index: Some(&index),
        examples: None,
    };
    let top_k = 20;
    let cfg = SamplerConfig {
        n_queries: 60,
        seed: 5,
        top_k,
        ..Default::default()
    };
    let (queries, report) = sample(&inputs, &cfg).unwrap();
    assert_eq!(queries.len(), 60);
    assert_eq!(report.rejected_too_many_objects, 100);
    assert_eq!(report.candidates, 200);

    // Naive cosine ranking, computed here independently of the index's matmul.
    let emb = |id: u64| index.embedding(id).unwrap().unwrap();
    let naive_top = |q: &[f32]| -> Vec<u64> {
        let mut s: Vec<(u64, f32)> = index
            .ids()
            .iter()
            .map(|&id| (id, emb(id).iter().zip(q).map(|(a, b)| a * b).sum()))
            .collect();
        s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        s.into_iter().take(top_k).map(|(id, _)| id).collect()
    };
    let mut seen = HashSet::new();
    for (i, q) in queries.iter().enumerate() {
        assert!(seen.insert(q.image_id), "image {} reused", q.image_id);
        assert!(images.object_count(q.image_id) <= 10);
        assert_eq!(q.boxes.len(), images.object_count(q.image_id));
        assert_eq!(q.captions, vec![format!("Image {}.", q.image_id)]);
        assert_eq!(
            q.image_path.as_deref(),
            Some(format!("{:012}.jpg", q.image_id).as_str())
        );
        if i % 2 == 1 {
            assert!(!q.similar, "odd query {i} must be random");
            continue;
        }
        let ImageRef::Coco { image_id } = pool
            .cases("alpha")
            .iter()
            .find(|c| c.id == q.examples[0].source_id)
            .unwrap()
            .image
        else {
            unreachable!()
        };
        let top = naive_top(&emb(image_id));
        if q.similar {
            assert!(
                top.contains(&q.image_id),
                "even query {i}: image {} not in the top-{top_k}",
                q.image_id
            );
        } else {
            // Only allowed when every acceptable top-K image is used up.
            assert!(top.iter().all(|id| id % 3 == 0
                || id >= &1_000_000
                || queries[..i].iter().any(|p| p.image_id == *id)));
        }
    }
    assert_eq!(report.similar + report.random, 60);
    assert_eq!(report.similar + report.fallback_top_k_exhausted, 30);
    assert!(report.similar > 0);

    // Uniform among the acceptable top-K: over many seeds, one query each, every acceptable
    // top-K image of that example shows up and nothing else does.
    let (pool1, _) = BadCasePool::new(
        cases(&[("alpha", 3)], 4).into_iter().map(|mut c| {
            c.image = ImageRef::Coco {
                image_id: 1_000_000,
            };
            c
        }),
        &tax,
    )
    .unwrap();
    let inputs1 = SampleInputs {
        pool: &pool1,
        weights: &w,
        taxonomy: &tax,
        images: &images,
        index: Some(&index),
        examples: None,
    };
    let top: HashSet<u64> = naive_top(&emb(1_000_000))
        .into_iter()
        .filter(|id| id % 3 != 0 && *id < 1_000_000)
        .collect();
    let mut hits = HashSet::new();
    for seed in 0..400 {
        let (q, _) = sample(
            &inputs1,
            &SamplerConfig {
                n_queries: 1,
                seed,
                top_k,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(q[0].similar && top.contains(&q[0].image_id));
        hits.insert(q[0].image_id);
    }
    assert_eq!(hits, top);
}

#[test]
fn exhaustion_stops_and_reports() {
    let tax = taxonomy();
    let (pool, _) = BadCasePool::new(cases(&[("beta", 2)], 4), &tax).unwrap();
    let w = weights(&[("beta", 0.3)]);
    let images = db(25, |id| if id <= 5 { 12 } else { 2 });
    let mut ids: Vec<u64> = (1..=25).collect();
    ids.extend([1_000_000, 1_000_001]);
    let index = random_index(ids, 4, 2);
    let inputs = SampleInputs {
        pool: &pool,
        weights: &w,
        taxonomy: &tax,
        images: &images,
        index: Some(&index),
        examples: None,
    };
    let (q, r) = sample(
        &inputs,
        &SamplerConfig {
            n_queries: 100,
            seed: 1,
            top_k: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(q.len(), 20);
    assert_eq!(r.built, 20);
    assert!(
        r.stop_reason.as_deref().unwrap().contains("exhausted"),
        "{:?}",
        r.stop_reason
    );
    assert!(r.fallback_top_k_exhausted > 0);
    assert_eq!(
        q.iter().map(|x| x.image_id).collect::<HashSet<_>>().len(),
        20
    );
    // Excluded images (earlier rounds) are never used.
    let exclude = (6..=15).collect();
    let (q, r) = sample(
        &inputs,
        &SamplerConfig {
            n_queries: 100,
            seed: 1,
            exclude_images: exclude,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((q.len(), r.excluded), (10, 10));
    assert!(q.iter().all(|x| x.image_id > 15));
    // No eligible type: zero queries and a reason, not an endless loop.
    let (q, r) = sample(
        &inputs,
        &SamplerConfig {
            n_queries: 5,
            min_cases: 3,
            similar_ratio: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(q.is_empty() && r.stop_reason.unwrap().contains("no eligible"));
    // Similarity without an index is a configuration error.
    let no_index = SampleInputs {
        index: None,
        ..inputs
    };
    assert!(sample(
        &no_index,
        &SamplerConfig {
            n_queries: 1,
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn same_seed_same_queries() {
    let tax = taxonomy();
    let (pool, _) =
        BadCasePool::new(cases(&[("alpha", 4), ("beta", 6), ("gamma", 3)], 3), &tax).unwrap();
    let w = weights(&[("alpha", 0.3), ("beta", 0.6), ("gamma", 0.1)]);
    let images = db(500, |id| (id % 12) as usize);
    let mut ids: Vec<u64> = (1..=500).collect();
    ids.extend(1_000_000..1_000_013);
    let index = random_index(ids, 16, 9);
    let inputs = SampleInputs {
        pool: &pool,
        weights: &w,
        taxonomy: &tax,
        images: &images,
        index: Some(&index),
        examples: None,
    };
    let cfg = SamplerConfig {
        n_queries: 200,
        seed: 42,
        top_k: 50,
        ..Default::default()
    };
    let (a, ra) = sample(&inputs, &cfg).unwrap();
    let (b, rb) = sample(&inputs, &cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(ra, rb);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    let (c, _) = sample(&inputs, &SamplerConfig { seed: 43, ..cfg }).unwrap();
    assert_ne!(a, c);
    assert_eq!(a[0].id, "q000000");
}

#[test]
fn similar_ratio_spreads_evenly() {
    let pattern: Vec<bool> = (0..6).map(|i| is_similar_query(i, 0.5)).collect();
    assert_eq!(pattern, [true, false, true, false, true, false]);
    for r in [0.0, 0.1, 0.25, 1.0 / 3.0, 0.7, 1.0] {
        let n = (0..1000).filter(|i| is_similar_query(*i, r)).count();
        assert!((n as f64 - 1000.0 * r).abs() <= 1.0, "ratio {r}: {n}");
    }
}

#[test]
fn unknown_bad_case_type_is_an_error() {
    let tax = taxonomy();
    let mut c = cases(&[("alpha", 2)], 4);
    c[1].question_type = Some("omega".into());
    let err = BadCasePool::new(c.clone(), &tax).unwrap_err().to_string();
    assert!(err.contains("alpha-1") && err.contains("omega"), "{err}");
    c[1].question_type = None;
    c[0].answer_idx = 9;
    let (pool, report) = BadCasePool::new(c, &tax).unwrap();
    assert_eq!(
        (pool.len(), report.untyped.len(), report.invalid.len()),
        (0, 1, 1)
    );
}

#[test]
fn example_rendering() {
    let ex = mde_core::records::InContextExample {
        question: "What is the dog doing?".into(),
        choices: vec![
            "sleeping".into(),
            "running".into(),
            "eating".into(),
            "barking".into(),
        ],
        answer_idx: 1,
        question_type: "action_recognition".into(),
        source_id: "x".into(),
    };
    assert_eq!(
        mde_abs::render_example(&ex, "Action Recognition"),
        "Question: What is the dog doing?\nChoices: (A) sleeping (B) running (C) eating (D) barking\n\
         Answer: The answer is (B): running.\nQuestion type: Action Recognition"
    );
}
