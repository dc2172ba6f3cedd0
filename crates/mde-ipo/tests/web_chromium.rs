//! The labelling page in a real headless Chromium (driven through chromedriver's WebDriver API):
//! it loads, draws the annotated and mentioned boxes, shows the image, and a label click is
//! persisted to disk. Needs Debian's `chromium` + `chromium-driver` (.ci/run installs them); when
//! they are absent the test says so and does nothing.
use mde_core::records::{GenQuery, ObjectBox};
use mde_ipo::trial::{Label, TrialItem};
use mde_ipo::Ipo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = match &self.session {
            Some(s) => format!("{}/session/{s}{path}", self.base),
            None => format!("{}{path}", self.base),
        };
        let resp = self.http.request(method, &url).json(&body).send().await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "webdriver {path}: {status} {v}");
        Ok(v["value"].clone())
    }
    /// The WebDriver element id of the first element matching a CSS selector.
    async fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no element for {css}: {v}"))
    }
    async fn script(&self, js: &str) -> anyhow::Result<Value> {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": js, "args": []}),
        )
        .await
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find_exe(name: &str) -> Option<String> {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).is_file() {
            return Some(p);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_loads_shows_boxes_and_persists_a_click() -> anyhow::Result<()> {
    let (Some(chromium), Some(chromedriver)) = (find_exe("chromium"), find_exe("chromedriver"))
    else {
        eprintln!("SKIPPED: chromium/chromedriver not installed (apt-get install chromium chromium-driver)");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        if x > 10 && x < 30 && y > 10 && y < 30 {
            image::Rgb([220, 20, 20])
        } else {
            image::Rgb([200, 200, 200])
        }
    });
    img.save(images.join("1.png"))?;

    let ipo = Ipo::init(dir.path().join("ipo"), "prompt v1 {captions}")?;
    let mut trial = ipo.trial(1)?;
    let query = GenQuery {
        id: "q0".into(),
        question_type: "attribute_recognition".into(),
        image_id: 1,
        image_path: Some("1.png".into()),
        captions: vec!["A red square on a grey background.".into()],
        boxes: vec![ObjectBox {
            category: "square".into(),
            bbox: [0.156, 0.156, 0.469, 0.469],
        }],
        ..Default::default()
    };
    for (id, reply) in [
        ("t0", "Question: What colour is the square [0.156, 0.156, 0.469, 0.469]?\nChoices: (A) red (B) blue (C) green (D) yellow\nAnswer: The answer is (A): red."),
        ("t1", "Question: What is the dog [0.6, 0.6, 0.9, 0.9] doing?\nChoices: (A) sitting (B) running (C) eating (D) sleeping\nAnswer: The answer is (A): sitting."),
    ] {
        trial.add_item(&TrialItem { id: id.into(), query: query.clone(), reply: reply.into(), ..Default::default() })?;
    }
    // t0 is already labelled OK: the page must open on t1, the first unlabelled item.
    trial.set_label(Label {
        item_id: "t0".into(),
        ok: true,
        failures: vec![],
        explanation: String::new(),
        at: 0,
    })?;
    let trial_dir = trial.dir().to_path_buf();

    let router = mde_ipo::web::router(trial, Some(images), vec![]);
    let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mde_ipo::web::serve(
        router,
        "127.0.0.1:0".parse()?,
        move |a| {
            let _ = tx.send(a);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let addr = rx.await?;

    let port = free_port();
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut d = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
        session: None,
    };
    let start = Instant::now();
    loop {
        if d.http
            .get(format!("{}/status", d.base))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = dir.path().join("profile");
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.display())]}}}});
    let sess = d.cmd(reqwest::Method::POST, "/session", caps).await?;
    d.session = Some(sess["sessionId"].as_str().unwrap_or_default().to_string());

    d.cmd(
        reqwest::Method::POST,
        "/url",
        json!({"url": format!("http://{addr}/")}),
    )
    .await?;
    let start = Instant::now();
    while d.script("return document.body.dataset.ready || ''").await? != json!("1") {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "page did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = d
        .script("return document.getElementById('info').textContent")
        .await?;
    assert!(
        info.as_str().unwrap_or("").starts_with("t1"),
        "page should open on the first unlabelled item: {info}"
    );
    let annotated = d
        .script("return document.querySelectorAll('#boxes rect.annotated').length")
        .await?;
    let mentioned = d
        .script("return document.querySelectorAll('#boxes rect.mentioned').length")
        .await?;
    assert_eq!((annotated, mentioned), (json!(1), json!(1)));
    let start = Instant::now();
    while d
        .script("const i=document.getElementById('img');return i.complete && i.naturalWidth")
        .await?
        != json!(64)
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "image did not load"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Type an explanation, then click "illusion".
    let input_id = d.find("#expl").await?;
    d.cmd(
        reqwest::Method::POST,
        &format!("/element/{input_id}/value"),
        json!({"text": "there is no dog"}),
    )
    .await?;
    let button_id = d.find("#cats button[data-cat=\"illusion\"]").await?;
    d.cmd(
        reqwest::Method::POST,
        &format!("/element/{button_id}/click"),
        json!({}),
    )
    .await?;

    let start = Instant::now();
    let labels_path = trial_dir.join("labels.jsonl");
    loop {
        let text = std::fs::read_to_string(&labels_path).unwrap_or_default();
        if text.contains("\"t1\"") {
            let last: Label = serde_json::from_str(text.lines().last().unwrap())?;
            assert_eq!(last.item_id, "t1");
            assert!(!last.ok);
            assert_eq!(
                last.failures,
                vec![mde_core::records::FailureCategory::Illusion]
            );
            assert_eq!(last.explanation, "there is no dog");
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "label click was not persisted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Re-opening the trial from disk sees the label (resumable).
    assert!(ipo.trial(1)?.label("t1").is_some_and(|l| !l.ok));

    let _ = d.cmd(reqwest::Method::DELETE, "", json!({})).await;
    d.session = None;
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
