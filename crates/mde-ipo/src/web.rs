//! The local labelling web page: serves one trial batch on 127.0.0.1 with the image, the annotated
//! boxes (green) and the boxes the reply mentions (red) drawn over it, the Q&A, and label buttons.
//! Every click is persisted immediately through [`Trial::set_label`], so closing the page loses
//! nothing.
use crate::trial::{Label, Trial};
use crate::IpoError;
use axum::extract::{Path as AxPath, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mde_core::records::FailureCategory;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

struct AppState {
    trial: Mutex<Trial>,
    image_root: Option<PathBuf>,
    categories: Vec<FailureCategory>,
}

#[derive(Serialize)]
struct ItemView {
    id: String,
    question_type: String,
    image_id: u64,
    has_image: bool,
    captions: Vec<String>,
    boxes: Vec<mde_core::records::ObjectBox>,
    reply: String,
    prelabels: Vec<FailureCategory>,
    notes: Vec<String>,
    label: Option<Label>,
}

#[derive(Deserialize)]
struct LabelIn {
    item_id: String,
    ok: bool,
    #[serde(default)]
    failures: Vec<String>,
    #[serde(default)]
    explanation: String,
}

fn image_path(state: &AppState, rel: &str) -> Option<PathBuf> {
    let root = state.image_root.as_ref()?;
    // The workspace's one path policy: only files inside the root are served (no absolute
    // paths, no `..` above it, no symlink out of it).
    mde_core::paths::resolve_in_root(root, rel).ok()
}

async fn items(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let trial = st.trial.lock().unwrap_or_else(|e| e.into_inner());
    let views: Vec<ItemView> = trial
        .items()
        .iter()
        .map(|i| ItemView {
            id: i.id.clone(),
            question_type: i.query.question_type.clone(),
            image_id: i.query.image_id,
            has_image: i
                .query
                .image_path
                .as_deref()
                .and_then(|p| image_path(&st, p))
                .is_some_and(|p| p.is_file()),
            captions: i.query.captions.clone(),
            boxes: i.query.boxes.clone(),
            reply: i.reply.clone(),
            prelabels: i.prelabels.clone(),
            notes: i.notes.clone(),
            label: trial.label(&i.id).cloned(),
        })
        .collect();
    let cats: Vec<serde_json::Value> = st
        .categories
        .iter()
        .map(|c| serde_json::json!({"id": c.as_str(), "label": c.label()}))
        .collect();
    Json(serde_json::json!({"items": views, "categories": cats}))
}

async fn image(State(st): State<Arc<AppState>>, AxPath(id): AxPath<String>) -> Response {
    let path = {
        let trial = st.trial.lock().unwrap_or_else(|e| e.into_inner());
        trial
            .item(&id)
            .and_then(|i| i.query.image_path.clone())
            .and_then(|p| image_path(&st, &p))
    };
    let Some(path) = path else {
        return (StatusCode::NOT_FOUND, "no image").into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let ct = match path
                .extension()
                .and_then(|e| e.to_str())
                .map(|e| e.to_ascii_lowercase())
                .as_deref()
            {
                Some("png") => "image/png",
                Some("jpg") | Some("jpeg") => "image/jpeg",
                _ => "application/octet-stream",
            };
            ([(header::CONTENT_TYPE, ct)], bytes).into_response()
        }
        Err(_) => (StatusCode::NOT_FOUND, "image not readable").into_response(),
    }
}

async fn label(State(st): State<Arc<AppState>>, Json(inp): Json<LabelIn>) -> Response {
    let label = Label {
        item_id: inp.item_id,
        ok: inp.ok,
        failures: inp
            .failures
            .iter()
            .map(|f| FailureCategory::parse(f))
            .collect(),
        explanation: inp.explanation,
        at: 0,
    };
    let mut trial = st.trial.lock().unwrap_or_else(|e| e.into_inner());
    match trial.set_label(label.clone()) {
        Ok(()) => Json(trial.label(&label.item_id).cloned()).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// Builds the router for a trial batch. `image_root` is where `GenQuery::image_path` resolves.
pub fn router(trial: Trial, image_root: Option<PathBuf>, extra_categories: Vec<String>) -> Router {
    let mut categories: Vec<FailureCategory> = FailureCategory::BUILTIN.to_vec();
    for c in extra_categories {
        let c = FailureCategory::parse(&c);
        if !categories.contains(&c) {
            categories.push(c);
        }
    }
    let state = Arc::new(AppState {
        trial: Mutex::new(trial),
        image_root,
        categories,
    });
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/items", get(items))
        .route("/api/image/{id}", get(image))
        .route("/api/label", post(label))
        .with_state(state)
}

/// Serves the labelling page on `addr` (use 127.0.0.1) until `shutdown` resolves. Returns the
/// bound address through `on_bound` (port 0 picks a free port).
pub async fn serve(
    router: Router,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), IpoError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| IpoError::io(format!("{addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| IpoError::io(format!("{addr}"), e))?;
    on_bound(bound);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| IpoError::io(format!("{bound}"), e))
}

const PAGE: &str = r##"<!doctype html>
<html><head><meta charset="utf-8"><title>mde IPO labelling</title>
<style>
body{font-family:sans-serif;margin:1em;max-width:1100px}
#main{display:flex;gap:1.5em}
#pic{position:relative;display:inline-block;background:#eee;min-width:320px;min-height:320px}
#pic img{width:448px;image-rendering:pixelated;display:block}
#pic svg{position:absolute;left:0;top:0;width:100%;height:100%}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.6em}
button{margin:.2em;padding:.4em .8em}
button.sel{background:#c33;color:#fff}
#ok.sel{background:#393;color:#fff}
.legend span{margin-right:1em}
</style></head>
<body>
<h2>IPO trial labelling <small id="progress"></small></h2>
<div id="main">
 <div><div id="pic"><img id="img" alt="image"><svg id="boxes" viewBox="0 0 1 1" preserveAspectRatio="none"></svg></div>
 <div class="legend"><span style="color:#0a0">&#9633; annotated</span><span style="color:#d00">&#9633; mentioned in reply</span></div>
 <pre id="info"></pre></div>
 <div style="flex:1"><pre id="reply"></pre><div id="suggest"></div>
 <div><button id="ok">OK</button><span id="cats"></span></div>
 <div><input id="expl" size="60" placeholder="one-line explanation for a failure"></div>
 <div><button id="prev">&larr; prev</button><button id="next">next &rarr;</button> <span id="status"></span></div>
 </div>
</div>
<script>
let items=[],cats=[],cur=0;
const $=id=>document.getElementById(id);
function boxesIn(text){const re=/\[\s*([0-9.]+)\s*,\s*([0-9.]+)\s*,\s*([0-9.]+)\s*,\s*([0-9.]+)\s*\]/g;let m,out=[];while((m=re.exec(text))){out.push(m.slice(1,5).map(Number))}return out}
function rect(b,color,cls){return `<rect class="${cls}" x="${b[0]}" y="${b[1]}" width="${Math.max(b[2]-b[0],0)}" height="${Math.max(b[3]-b[1],0)}" fill="none" stroke="${color}" stroke-width="0.008"/>`}
function show(){
 if(!items.length){$('reply').textContent='no trial items';return}
 const it=items[cur];
 $('progress').textContent=`${cur+1} / ${items.length} (${items.filter(i=>i.label).length} labelled)`;
 $('img').src=it.has_image?`/api/image/${encodeURIComponent(it.id)}`:'';
 let svg=it.boxes.map(b=>rect(b.bbox,'#0a0','annotated')).join('');
 svg+=boxesIn(it.reply).map(b=>rect(b,'#d00','mentioned')).join('');
 $('boxes').innerHTML=svg;
 $('info').textContent=`${it.id}  type: ${it.question_type}  image ${it.image_id}\n`+it.captions.join('\n')+'\n'+it.boxes.map(b=>`${b.category}: [${b.bbox.map(x=>x.toFixed(3)).join(', ')}]`).join('\n');
 $('reply').textContent=it.reply;
 $('suggest').textContent=it.prelabels.length?`validator suggests: ${it.prelabels.join(', ')} (${it.notes.join('; ')})`:'validator: no issue found';
 const l=it.label;
 $('ok').className=l&&l.ok?'sel':'';
 $('cats').innerHTML=cats.map(c=>`<button data-cat="${c.id}" class="${l&&!l.ok&&l.failures.includes(c.id)?'sel':''}">${c.label}</button>`).join('');
 document.querySelectorAll('#cats button').forEach(b=>b.onclick=()=>send(false,[b.dataset.cat]));
 $('expl').value=l?l.explanation:'';
 $('status').textContent=l?(l.ok?'labelled OK':'labelled: '+l.failures.join(', ')):'not labelled';
}
async function send(ok,failures){
 const it=items[cur];
 const r=await fetch('/api/label',{method:'POST',headers:{'content-type':'application/json'},body:JSON.stringify({item_id:it.id,ok:ok,failures:failures,explanation:$('expl').value})});
 if(!r.ok){$('status').textContent='error: '+await r.text();return}
 it.label=await r.json();show();
}
$('ok').onclick=()=>send(true,[]);
$('prev').onclick=()=>{cur=Math.max(0,cur-1);show()};
$('next').onclick=()=>{cur=Math.min(items.length-1,cur+1);show()};
fetch('/api/items').then(r=>r.json()).then(d=>{items=d.items;cats=d.categories;const f=items.findIndex(i=>!i.label);cur=f<0?0:f;show();document.body.dataset.ready='1'});
</script></body></html>
"##;
