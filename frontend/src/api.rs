//! The REST API, called from the browser: JSON requests through `fetch`, file uploads through
//! `XMLHttpRequest` (the only browser API that reports upload progress), job events through `EventSource`.
//! The session cookie travels with every same-origin request; a 401 signs the user out of the app.

use std::fmt;

use leptos::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{FormData, ProgressEvent, Request, RequestCredentials, RequestInit, Response, XmlHttpRequest};

pub const BASE: &str = "/api/v1";

/// What went wrong with a call, as the server's error body says (or the network, with status 0).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    fn network(message: impl Into<String>) -> Self {
        ApiError { status: 0, code: "network".into(), message: message.into() }
    }

    /// From a non-2xx reply's status and body.
    fn from_reply(status: u16, body: &str) -> Self {
        match serde_json::from_str::<repdiff_api::ErrorBody>(body) {
            Ok(body) => ApiError { status, code: body.error.code.as_str().into(), message: body.error.message },
            Err(_) => ApiError { status, code: "http".into(), message: format!("HTTP {status}: {}", body.trim()) },
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

thread_local! {
    static SESSION_LOST: std::cell::Cell<Option<RwSignal<bool>>> = const { std::cell::Cell::new(None) };
}

/// The signal set when a call finds the session gone (401); the app then shows the sign-in page.
pub fn watch_session(lost: RwSignal<bool>) {
    SESSION_LOST.with(|cell| cell.set(Some(lost)));
}

fn session_lost() {
    if let Some(lost) = SESSION_LOST.with(|cell| cell.get()) {
        lost.set(true);
    }
}

fn js_error(value: JsValue) -> ApiError {
    ApiError::network(value.as_string().unwrap_or_else(|| format!("{value:?}")))
}

async fn send(method: &str, path: &str, body: Option<String>) -> ApiResult<String> {
    let init = RequestInit::new();
    init.set_method(method);
    init.set_credentials(RequestCredentials::SameOrigin);
    let headers = web_sys::Headers::new().map_err(js_error)?;
    headers.set("Accept", "application/json").map_err(js_error)?;
    if let Some(body) = &body {
        headers.set("Content-Type", "application/json").map_err(js_error)?;
        init.set_body(&JsValue::from_str(body));
    }
    init.set_headers(&headers);
    // Paths under the API; an artifact's `url` is already absolute.
    let url = if path.starts_with(BASE) { path.to_string() } else { format!("{BASE}{path}") };
    let request = Request::new_with_str_and_init(&url, &init).map_err(js_error)?;
    let window = web_sys::window().ok_or_else(|| ApiError::network("no window"))?;
    let reply = JsFuture::from(window.fetch_with_request(&request))
        .await
        .map_err(|_| ApiError::network("the server did not answer (network error)"))?;
    let reply: Response = reply.unchecked_into();
    let text = JsFuture::from(reply.text().map_err(js_error)?).await.map_err(js_error)?;
    let text = text.as_string().unwrap_or_default();
    let status = reply.status();
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        if status == 401 && path != "/auth/login" {
            session_lost();
        }
        Err(ApiError::from_reply(status, &text))
    }
}

fn decode<T: DeserializeOwned>(text: &str) -> ApiResult<T> {
    serde_json::from_str(text).map_err(|e| ApiError::network(format!("unexpected reply from the server: {e}")))
}

/// A text body (a report artifact), by API path or artifact URL.
pub async fn get_text(path: &str) -> ApiResult<String> {
    send("GET", path, None).await
}

pub async fn get<T: DeserializeOwned>(path: &str) -> ApiResult<T> {
    decode(&send("GET", path, None).await?)
}

pub async fn post<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> ApiResult<T> {
    let body = serde_json::to_string(body).expect("request bodies serialise");
    decode(&send("POST", path, Some(body)).await?)
}

/// A POST whose reply body does not matter (logout).
pub async fn post_empty(path: &str) -> ApiResult<()> {
    send("POST", path, None).await.map(|_| ())
}

pub async fn patch<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> ApiResult<T> {
    let body = serde_json::to_string(body).expect("request bodies serialise");
    decode(&send("PATCH", path, Some(body)).await?)
}

pub async fn put<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> ApiResult<T> {
    let body = serde_json::to_string(body).expect("request bodies serialise");
    decode(&send("PUT", path, Some(body)).await?)
}

/// Percent-encodes a query value.
pub fn enc(value: &str) -> String {
    String::from(js_sys::encode_uri_component(value))
}

/// Uploads one file (with the dataset's optional label manifest and default site) as one multipart
/// request, calling `progress(sent, total)` as the bytes go out. One request per file keeps failures per
/// file: a refused or failed file is retried alone.
pub async fn upload_scan(
    dataset: i64,
    file: &web_sys::File,
    labels: Option<&web_sys::File>,
    site: u32,
    progress: impl Fn(f64, f64) + 'static,
) -> ApiResult<repdiff_api::UploadReport> {
    let form = FormData::new().map_err(js_error)?;
    if let Some(labels) = labels {
        form.append_with_blob_and_filename("labels", labels, &labels.name()).map_err(js_error)?;
        // The labels file describes all the files picked; this request carries one of them.
        form.append_with_str("labels_scope", "dataset").map_err(js_error)?;
    }
    form.append_with_str("site", &site.to_string()).map_err(js_error)?;
    form.append_with_blob_and_filename("files", file, &file.name()).map_err(js_error)?;

    let xhr = XmlHttpRequest::new().map_err(js_error)?;
    xhr.open_with_async("POST", &format!("{BASE}/datasets/{dataset}/scans"), true).map_err(js_error)?;
    xhr.set_request_header("Accept", "application/json").map_err(js_error)?;
    let on_progress = Closure::<dyn FnMut(ProgressEvent)>::new(move |e: ProgressEvent| {
        if e.length_computable() {
            progress(e.loaded(), e.total());
        }
    });
    xhr.upload().map_err(js_error)?.set_onprogress(Some(on_progress.as_ref().unchecked_ref()));
    let done = js_sys::Promise::new(&mut |resolve, _reject| {
        // Resolves on load, error and abort alike; the status tells them apart.
        xhr.set_onloadend(Some(&resolve));
    });
    xhr.send_with_opt_form_data(Some(&form)).map_err(js_error)?;
    JsFuture::from(done).await.map_err(js_error)?;
    drop(on_progress);
    let status = xhr.status().unwrap_or(0);
    let text = xhr.response_text().ok().flatten().unwrap_or_default();
    match status {
        0 => Err(ApiError::network("the upload was interrupted (network error)")),
        200..=299 => decode(&text),
        _ => {
            if status == 401 {
                session_lost();
            }
            Err(ApiError::from_reply(status, &text))
        }
    }
}
