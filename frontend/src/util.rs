//! Small helpers shared by the pages: formatting, loading/error views, URL parameters.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

use crate::api::ApiError;

/// "3 min ago", "2 h ago", or the date.
pub fn ago(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => at.format("%Y-%m-%d").to_string(),
    }
}

/// "45 s", "12 min 3 s", "5 h 2 min".
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    }
}

pub fn bytes(n: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} {}", units[u]) } else { format!("{v:.1} {}", units[u]) }
}

/// The route parameter `name` as an id.
pub fn param_id(name: &'static str) -> Memo<Option<i64>> {
    let params = use_params_map();
    Memo::new(move |_| params.read().get(name).and_then(|v| v.parse().ok()))
}

/// An error where it happened.
#[component]
pub fn ErrorBox(#[prop(into)] error: Signal<Option<ApiError>>) -> impl IntoView {
    move || error.get().map(|e| view! { <div class="error" role="alert">{e.message}</div> })
}

/// A loaded value, or "Loading…", or its error.
pub fn loaded<T: Clone + Send + Sync + 'static, V: IntoView + 'static>(
    value: Option<Result<T, ApiError>>,
    show: impl FnOnce(T) -> V,
) -> AnyView {
    match value {
        None => view! { <p class="loading">"Loading…"</p> }.into_any(),
        Some(Err(e)) => view! { <div class="error" role="alert">{e.message}</div> }.into_any(),
        Some(Ok(v)) => show(v).into_any(),
    }
}

pub fn state_badge(state: repdiff_api::JobState) -> impl IntoView {
    view! { <span class=format!("badge state-{}", state.as_str())>{state.as_str()}</span> }
}
