//! One dataset: drag-and-drop upload with per-file progress and errors (failed files retried alone), the
//! split summary (by patient or by slice), the series opened as stacks, and the scan browser with
//! windowing presets, label and site editing.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::query_signal;
use repdiff_api::{Dataset, ResourcePatch, Scan, ScanPatch, Series, SplitSummary, UploadReport};
use send_wrapper::SendWrapper;
use wasm_bindgen::JsCast;

use crate::api::{self, ApiError};
use crate::session::Session;
use crate::util::{ErrorBox, bytes, loaded, param_id};

const WINDOWS: [&str; 4] = ["brain", "subdural", "soft-tissue", "bone"];
const PAGE: usize = 120;

#[derive(Clone, Debug, PartialEq)]
enum FileState {
    Waiting,
    Sending(f64),
    Done { slices: usize, duplicates: usize },
    Refused(String),
    Failed(String),
}

/// A file picked for upload and how it went.
#[derive(Clone)]
struct Pick {
    file: SendWrapper<web_sys::File>,
    state: RwSignal<FileState>,
}

#[component]
pub fn DatasetPage() -> impl IntoView {
    let id = param_id("id");
    move || id.get().map(|id| view! { <DatasetView id=id /> })
}

/// The dataset's header refreshes after uploads; the upload list, split and scan browser below it keep
/// their state.
#[component]
fn DatasetView(id: i64) -> impl IntoView {
    let dataset = RwSignal::new(None::<Result<Dataset, ApiError>>);
    let refresh =
        move || spawn_local(async move { dataset.set(Some(api::get::<Dataset>(&format!("/datasets/{id}")).await)) });
    refresh();
    let session = expect_context::<Session>();
    let error = RwSignal::new(None::<ApiError>);
    let change = move |patch: ResourcePatch| {
        spawn_local(async move {
            match api::patch::<_, Dataset>(&format!("/datasets/{id}"), &patch).await {
                Ok(d) => dataset.set(Some(Ok(d))),
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let share = move |shared: bool| change(ResourcePatch { shared: Some(!shared), ..Default::default() });
    let keep_names = move |keep: bool| change(ResourcePatch { keep_file_names: Some(!keep), ..Default::default() });
    let scans = RwSignal::new(Vec::<Scan>::new());
    let scans_changed = RwSignal::new(0u32);
    let found = move || dataset.with(|d| matches!(d, Some(Ok(_))));
    view! {
        {move || loaded(dataset.get(), move |d: Dataset| {
            let mine = session.me.get_untracked().is_some_and(|u| u.username == d.owner);
            let (shared, keep) = (d.shared, d.keep_file_names);
            view! {
                <h1>{d.name.clone()}</h1>
                <p class="muted">
                    {(!d.description.is_empty()).then(|| format!("{} · ", d.description))}
                    {format!("{} slices, {} with hematoma, {} patients, {} series", d.scans, d.hematoma, d.patients, d.series)}
                    {(d.unlabelled > 0).then(|| view! { <span class="warning-text">{format!(" · {} unlabelled", d.unlabelled)}</span> })}
                    " · owner " {d.owner.clone()} " · " {if d.shared { "shared with the team" } else { "private" }}
                    {mine.then(|| view! { " " <button class="link" on:click=move |_| share(shared)>{if shared { "Make private" } else { "Share" }}</button> })}
                    " · " {if keep { "file names kept" } else { "pseudonymous scan names" }}
                    {mine.then(|| view! { " " <button class="link" name="keep-names" on:click=move |_| keep_names(keep)>{if keep { "Use pseudonyms" } else { "Keep file names" }}</button> })}
                </p>
                {keep.then(|| view! { <p class="warning small">"This dataset stores uploaded file names: they often carry patient names or IDs."</p> })}
            }
        })}
        <ErrorBox error=error />
        <Show when=found>
            <Upload dataset=id on_done=move || { scans_changed.update(|n| *n += 1); refresh(); } />
            <Split dataset=id changed=scans_changed scans=scans />
            <SeriesList dataset=id changed=scans_changed />
            <ScanBrowser dataset=id changed=scans_changed scans=scans />
        </Show>
    }
}

#[component]
fn Upload(dataset: i64, on_done: impl Fn() + Copy + Send + Sync + 'static) -> impl IntoView {
    let picks = RwSignal::new(Vec::<Pick>::new());
    let labels = RwSignal::new(None::<SendWrapper<web_sys::File>>);
    let site = RwSignal::new(0u32);
    let busy = RwSignal::new(false);
    let dragging = RwSignal::new(false);

    let add_files = move |list: Option<web_sys::FileList>| {
        let Some(list) = list else { return };
        picks.update(|p| {
            for i in 0..list.length() {
                if let Some(file) = list.get(i) {
                    p.push(Pick { file: SendWrapper::new(file), state: RwSignal::new(FileState::Waiting) });
                }
            }
        });
    };
    // Sends every file not yet accepted (waiting, refused or failed), one request each.
    let send = move || {
        if busy.get_untracked() {
            return;
        }
        busy.set(true);
        let todo: Vec<Pick> = picks
            .get_untracked()
            .into_iter()
            .filter(|p| !matches!(p.state.get_untracked(), FileState::Done { .. }))
            .collect();
        let labels = labels.get_untracked();
        let site = site.get_untracked();
        spawn_local(async move {
            for pick in todo {
                pick.state.set(FileState::Sending(0.0));
                let state = pick.state;
                let result = api::upload_scan(dataset, &pick.file, labels.as_deref(), site, move |sent, total| {
                    state.set(FileState::Sending(if total > 0.0 { sent / total } else { 0.0 }));
                })
                .await;
                pick.state.set(match result {
                    Ok(UploadReport { accepted, refused, duplicates }) => match refused.first() {
                        Some(r) if accepted.is_empty() && duplicates == 0 => FileState::Refused(r.error.clone()),
                        _ => FileState::Done { slices: accepted.len(), duplicates },
                    },
                    Err(e) => FileState::Failed(e.message),
                });
            }
            busy.set(false);
            on_done();
        });
    };
    let counts = move || {
        let p = picks.get();
        let done = p.iter().filter(|p| matches!(p.state.get(), FileState::Done { .. })).count();
        let bad = p.iter().filter(|p| matches!(p.state.get(), FileState::Refused(_) | FileState::Failed(_))).count();
        (p.len(), done, bad)
    };
    view! {
        <section class="card">
            <h2>"Upload scans"</h2>
            <div
                class=move || if dragging.get() { "dropzone over" } else { "dropzone" }
                on:dragover=move |ev: web_sys::DragEvent| { ev.prevent_default(); dragging.set(true); }
                on:dragleave=move |_| dragging.set(false)
                on:drop=move |ev: web_sys::DragEvent| {
                    ev.prevent_default();
                    dragging.set(false);
                    add_files(ev.data_transfer().and_then(|d| d.files()));
                }
            >
                <p>"Drop DICOM, NIfTI or PNG files here, or "
                    <label class="filepick">"choose files"
                        <input type="file" multiple name="files" class="visually-hidden"
                            on:change=move |ev| {
                                let input = event_target::<web_sys::HtmlInputElement>(&ev);
                                add_files(input.files());
                                input.set_value("");
                            } />
                    </label>
                </p>
            </div>
            <div class="inline">
                <label>"Labels (CSV or JSON manifest, optional) "
                    <input type="file" name="labels" accept=".csv,.json"
                        on:change=move |ev| {
                            let input = event_target::<web_sys::HtmlInputElement>(&ev);
                            labels.set(input.files().and_then(|f| f.get(0)).map(SendWrapper::new));
                        } />
                </label>
                <label>"Site of unlabelled files "
                    <input type="number" min="0" name="site" class="short" prop:value=move || site.get().to_string()
                        on:input=move |ev| site.set(event_target_value(&ev).parse().unwrap_or(0)) />
                </label>
                <button on:click=move |_| send() disabled=move || busy.get() || counts().0 == counts().1>
                    {move || {
                        let (total, done, bad) = counts();
                        if busy.get() { "Uploading…".to_string() }
                        else if bad > 0 { format!("Retry {bad} failed") }
                        else { format!("Upload {} files", total - done) }
                    }}
                </button>
                <button class="link" on:click=move |_| picks.update(|p| p.retain(|p| !matches!(p.state.get_untracked(), FileState::Done { .. })))>
                    "Clear finished"
                </button>
            </div>
            <Show when=move || !picks.with(Vec::is_empty)>
                <p class="muted">{move || { let (t, d, b) = counts(); format!("{d} of {t} files stored, {b} refused or failed") }}</p>
                <ul class="files">
                    <For each=move || picks.get().into_iter().enumerate() key=|(i, _)| *i let((_, pick))>
                        <FileRow pick=pick />
                    </For>
                </ul>
            </Show>
        </section>
    }
}

#[component]
fn FileRow(pick: Pick) -> impl IntoView {
    let name = pick.file.name();
    let size = bytes(pick.file.size());
    let state = pick.state;
    view! {
        <li class=move || match state.get() {
            FileState::Done { .. } => "file done",
            FileState::Refused(_) | FileState::Failed(_) => "file bad",
            _ => "file",
        }>
            <span class="name">{name}</span>
            <span class="muted">{size}</span>
            {move || match state.get() {
                FileState::Waiting => view! { <span class="status">"waiting"</span> }.into_any(),
                FileState::Sending(f) => view! {
                    <progress max="1" value=f></progress><span class="status">{format!("{:.0}%", f * 100.0)}</span>
                }.into_any(),
                FileState::Done { slices, duplicates } => view! {
                    <span class="status">{format!("stored: {slices} slices{}", if duplicates > 0 { format!(", {duplicates} already there") } else { String::new() })}</span>
                }.into_any(),
                FileState::Refused(e) => view! { <span class="status error-text">{format!("refused: {e}")}</span> }.into_any(),
                FileState::Failed(e) => view! { <span class="status error-text">{format!("failed: {e}")}</span> }.into_any(),
            }}
        </li>
    }
}

#[component]
fn Split(dataset: i64, changed: RwSignal<u32>, scans: RwSignal<Vec<Scan>>) -> impl IntoView {
    let (site_q, set_site) = query_signal::<usize>("downstream_site");
    let (seed, set_seed) = query_signal::<u64>("seed");
    let (unit, set_unit) = query_signal::<String>("unit");
    // `design=single`: every slice split into train, validation and test (no pre-training sites).
    let (design, set_design) = query_signal::<String>("design");
    let single = move || design.get().as_deref() == Some("single");
    let unit_name = move || unit.get().unwrap_or_else(|| "patient".into());
    // Unless the address names one, the highest site among the scans (the paper holds out one site).
    let site =
        Memo::new(move |_| site_q.get().or_else(|| scans.with(|s| s.iter().map(|s| s.site.max(0) as usize).max())));
    let summary = LocalResource::new(move || {
        changed.track();
        let site = site.get();
        let single = single();
        let seed = seed.get().unwrap_or(0);
        let unit = api::enc(&unit_name());
        async move {
            match site {
                Some(site) => {
                    let site = if single { String::new() } else { format!("&downstream_site={site}") };
                    api::get::<SplitSummary>(&format!("/datasets/{dataset}/split?seed={seed}&unit={unit}{site}"))
                        .await
                        .map(Some)
                }
                None => Ok(None),
            }
        }
    });
    view! {
        <section class="card">
            <h2>"Split"</h2>
            <p class="muted">"The downstream site's patients (or, as the paper did, its slices) 8:1:1 into train, validation and test, stratified by label; every other site's slices into pre-training."</p>
            <div class="inline">
                <label class="check"><input type="checkbox" name="single_site" prop:checked=single
                    on:change=move |ev| set_design.set(event_target_checked(&ev).then(|| "single".to_string())) />"One site (no pre-training sites)"</label>
                <Show when=move || !single()>
                    <label>"Downstream site "
                        <input type="number" min="0" class="short" name="downstream_site" prop:value=move || site.get().unwrap_or(0).to_string()
                            on:change=move |ev| set_site.set(event_target_value(&ev).parse().ok()) />
                    </label>
                </Show>
                <label>"Seed "
                    <input type="number" min="0" class="short" name="seed" prop:value=move || seed.get().unwrap_or(0).to_string()
                        on:change=move |ev| set_seed.set(event_target_value(&ev).parse().ok()) />
                </label>
                <span role="radiogroup" aria-label="Split by">
                    "Split by: "
                    {["patient", "slice"].into_iter().map(|u| view! {
                        <button class=move || if unit_name() == u { "chip on" } else { "chip" } role="radio" name="split_unit"
                            aria-checked=move || (unit_name() == u).to_string()
                            on:click=move |_| set_unit.set(Some(u.to_string()))>{u}</button>
                    }).collect_view()}
                </span>
            </div>
            {move || loaded(summary.get(), |s: Option<SplitSummary>| {
                let Some(s) = s else { return view! { <p class="empty">"No scans yet."</p> }.into_any() };
                let total_no: i64 = s.parts.iter().map(|p| p.no_hematoma).sum();
                let total_yes: i64 = s.parts.iter().map(|p| p.hematoma).sum();
                let leak = (s.patients_in_two_parts > 0).then(|| format!(
                    "{} patients have slices in more than one of train, validation and test.", s.patients_in_two_parts
                ));
                let empty: Vec<String> = s
                    .parts
                    .iter()
                    .filter(|p| p.part != "pretrain" && p.no_hematoma + p.hematoma + p.unlabelled == 0)
                    .map(|p| p.part.clone())
                    .collect();
                let empty = (!empty.is_empty()).then(|| format!(
                    "No {} slices: a part gets a unit of a label only when that label has enough of them (ten for 8:1:1). Split by slice, or pick a site with more {}s.",
                    empty.join(" or "),
                    s.unit.name()
                ));
                let caveat_class = if s.patients_in_two_parts > 0 { "warning small caveat" } else { "muted small caveat" };
                let unnamed = (s.slices_without_patient > 0).then(|| format!(
                    "{} slices name no patient, study or series: each counts as a patient of its own.", s.slices_without_patient
                ));
                view! {
                    <table class="grid split">
                        <thead><tr><th>"Part"</th><th>"Patients"</th><th>"with hematoma"</th><th>"No hematoma"</th><th>"Hematoma"</th><th>"Total"</th></tr></thead>
                        <tbody>
                            {s.parts.into_iter().map(|p| view! {
                                <tr><td>{p.part.clone()}</td><td class="num">{p.patients}</td><td class="num">{p.patients_with_hematoma}</td>
                                    <td class="num">{p.no_hematoma}</td><td class="num">{p.hematoma}</td><td class="num">{p.no_hematoma + p.hematoma}</td></tr>
                            }).collect_view()}
                            <tr class="total"><td>"all"</td><td></td><td></td><td class="num">{total_no}</td><td class="num">{total_yes}</td><td class="num">{total_no + total_yes}</td></tr>
                        </tbody>
                    </table>
                    <p class=caveat_class>
                        {format!("{}.", s.caveat)} " " {leak} " " {unnamed}
                    </p>
                    {empty.map(|e| view! { <p class="warning small">{e}</p> })}
                }
                .into_any()
            })}
        </section>
    }
}

/// The dataset's series (a DICOM series, a NIfTI volume, or as a labels file grouped them): one opens as a
/// stack, stepped through slice by slice with the buttons, the slider, the arrow keys or the mouse wheel.
#[component]
fn SeriesList(dataset: i64, changed: RwSignal<u32>) -> impl IntoView {
    let series = LocalResource::new(move || {
        changed.track();
        async move { api::get::<Vec<Series>>(&format!("/datasets/{dataset}/series")).await }
    });
    let (open, set_open) = query_signal::<String>("series");
    let (window, _) = query_signal::<String>("window");
    let window_name = Signal::derive(move || window.get().unwrap_or_else(|| "brain".into()));
    view! {
        <section class="card">
            <h2>"Series"</h2>
            {move || loaded(series.get(), move |list: Vec<Series>| {
                if list.is_empty() {
                    return view! { <p class="empty">"No scans yet."</p> }.into_any();
                }
                let all = list.clone();
                let opened = move || open.get().and_then(|o| all.iter().find(|s| s.series == o).cloned());
                view! {
                    <table class="grid series">
                        <thead><tr><th>"Patient"</th><th>"Series"</th><th>"Site"</th><th>"Slices"</th><th>"Hematoma"</th><th></th></tr></thead>
                        <tbody>
                            {list.into_iter().map(|s| {
                                let name = s.series.clone();
                                let short = short_uid(&s.series);
                                view! {
                                    <tr class=move || if open.get().as_deref() == Some(name.as_str()) { "on" } else { "" }>
                                        <td>{s.patient.clone().unwrap_or_else(|| "–".into())}</td>
                                        <td title=s.series.clone()>{short}</td>
                                        <td class="num">{s.site}</td>
                                        <td class="num">{s.slices}</td>
                                        <td class="num">{s.hematoma}</td>
                                        <td><button class="link" name="open-series" on:click={
                                            let name = s.series.clone();
                                            move |_| set_open.set(Some(name.clone()))
                                        }>"Open stack"</button></td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                    {move || opened().map(|s| view! { <Stack series=s window=window_name on_close=move || set_open.set(None) /> })}
                }
                .into_any()
            })}
        </section>
    }
}

/// The last 12 digits of a pseudonymous UID (the whole one is in the title).
fn short_uid(uid: &str) -> String {
    let tail: String = uid.chars().rev().take(12).collect();
    format!("…{}", tail.chars().rev().collect::<String>())
}

/// One series as a stack: a slice at a time, in the series' order.
#[component]
fn Stack(
    series: Series,
    #[prop(into)] window: Signal<String>,
    on_close: impl Fn() + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let ids = series.scan_ids.clone();
    let count = ids.len();
    let at = RwSignal::new(0usize);
    let step = move |by: isize| at.update(|k| *k = (*k as isize + by).clamp(0, count as isize - 1) as usize);
    let scan = Memo::new(move |_| at.get());
    let ids_for_img = ids.clone();
    let name = series.series.clone();
    let on_key = move |ev: web_sys::KeyboardEvent| match ev.key().as_str() {
        "ArrowUp" | "ArrowRight" | "PageDown" => {
            ev.prevent_default();
            step(1)
        }
        "ArrowDown" | "ArrowLeft" | "PageUp" => {
            ev.prevent_default();
            step(-1)
        }
        "Home" => at.set(0),
        "End" => at.set(count.saturating_sub(1)),
        "Escape" => on_close(),
        _ => {}
    };
    let on_wheel = move |ev: web_sys::WheelEvent| {
        ev.prevent_default();
        step(if ev.delta_y() > 0.0 { 1 } else { -1 });
    };
    let viewer = NodeRef::<leptos::html::Div>::new();
    Effect::new(move |_| {
        if let Some(div) = viewer.get() {
            let _ = div.focus();
        }
    });
    view! {
        <div class="stack" tabindex="0" node_ref=viewer on:keydown=on_key on:wheel=on_wheel
            role="group" aria-label=format!("Series {}", series.series)>
            <div class="inline">
                <strong>{format!("{} · {}", series.patient.clone().unwrap_or_else(|| "no patient".into()), short_uid(&series.series))}</strong>
                <button name="stack-prev" on:click=move |_| step(-1) disabled=move || at.get() == 0>"◀ Previous"</button>
                <span class="stack-position" aria-live="polite">{move || format!("slice {} of {count}", at.get() + 1)}</span>
                <button name="stack-next" on:click=move |_| step(1) disabled=move || { at.get() + 1 >= count }>"Next ▶"</button>
                <button class="link" on:click=move |_| on_close()>"Close"</button>
            </div>
            <input type="range" name="stack-slider" min="0" max=(count.saturating_sub(1)).to_string() prop:value=move || at.get().to_string()
                on:input=move |ev| at.set(event_target_value(&ev).parse().unwrap_or(0)) />
            <img class="full" alt=move || format!("slice {} of series {name}", scan.get() + 1)
                data-scan=move || ids_for_img[scan.get()].to_string()
                src=move || format!("/api/v1/scans/{}/image?window={}", ids[scan.get()], api::enc(&window.get())) />
        </div>
    }
}

#[component]
fn ScanBrowser(dataset: i64, changed: RwSignal<u32>, scans: RwSignal<Vec<Scan>>) -> impl IntoView {
    let (window, set_window) = query_signal::<String>("window");
    let (selected, set_selected) = query_signal::<i64>("scan");
    let more = RwSignal::new(false);
    let error = RwSignal::new(None::<ApiError>);
    let load = move |after: Option<i64>| {
        spawn_local(async move {
            let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
            match api::get::<Vec<Scan>>(&format!("/datasets/{dataset}/scans?limit={PAGE}{after}")).await {
                Ok(page) => {
                    more.set(page.len() == PAGE);
                    scans.update(|s| s.extend(page));
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    Effect::new(move |_| {
        changed.track();
        scans.set(Vec::new());
        load(None);
    });
    let window_name = move || window.get().unwrap_or_else(|| "brain".into());
    let open_scan = Memo::new(move |_| selected.get().filter(|id| scans.with(|s| s.iter().any(|s| s.id == *id))));
    view! {
        <section class="card">
            <h2>"Scans"</h2>
            <div class="inline" role="radiogroup" aria-label="Window">
                "Window: "
                {WINDOWS.iter().map(|w| view! {
                    <button class=move || if window_name() == *w { "chip on" } else { "chip" } role="radio"
                        aria-checked=move || (window_name() == *w).to_string()
                        on:click=move |_| set_window.set(Some(w.to_string()))>{*w}</button>
                }).collect_view()}
            </div>
            <ErrorBox error=error />
            {move || scans.with(Vec::is_empty).then(|| view! { <p class="empty">"No scans yet."</p> })}
            <div class="thumbs">
                <For each=move || scans.get() key=|s| (s.id, s.site, s.labelled, s.hematoma, s.hypodensity, s.margin_irregularity, s.blend_sign, s.fluid_level) let(s)>
                    <button class=move || if selected.get() == Some(s.id) { "thumb on" } else { "thumb" }
                        on:click=move |_| set_selected.set(Some(s.id)) title=s.source_name.clone()>
                        <img loading="lazy" alt=format!("scan {}", s.id)
                            src=move || format!("{}?window={}&size=128", s.image_url, api::enc(&window_name())) />
                        <span class=if !s.labelled { "tag unlabelled" } else if s.hematoma { "tag hem" } else { "tag" }>
                            {if !s.labelled { "unlabelled" } else if s.hematoma { "hematoma" } else { "none" }}
                        </span>
                        <span class="tag site">{format!("site {}", s.site)}</span>
                    </button>
                </For>
            </div>
            {move || more.get().then(|| view! {
                <button on:click=move |_| load(scans.with(|s| s.last().map(|s| s.id)))>"Load more"</button>
            })}
        </section>
        // The editor follows the selection, not the list: saving (which updates the list) keeps it open.
        {move || open_scan.get().and_then(|id| scans.with_untracked(|s| s.iter().find(|s| s.id == id).cloned())).map(|scan| view! {
            <ScanEditor scan=scan window=Signal::derive(window_name) scans=scans on_close=move || set_selected.set(None) />
        })}
    }
}

#[component]
fn ScanEditor(
    scan: Scan,
    #[prop(into)] window: Signal<String>,
    scans: RwSignal<Vec<Scan>>,
    on_close: impl Fn() + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let site = RwSignal::new(scan.site);
    let markers = [
        ("hypodensity", RwSignal::new(scan.hypodensity)),
        ("margin irregularity", RwSignal::new(scan.margin_irregularity)),
        ("blend sign", RwSignal::new(scan.blend_sign)),
        ("fluid level", RwSignal::new(scan.fluid_level)),
    ];
    let error = RwSignal::new(None::<ApiError>);
    let saved = RwSignal::new(false);
    let id = scan.id;
    // Keyboard users land in the dialog.
    let first_field = NodeRef::<leptos::html::Input>::new();
    Effect::new(move |_| {
        if let Some(input) = first_field.get() {
            let _ = input.focus();
        }
    });
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let patch = ScanPatch {
            site: Some(site.get_untracked()),
            hypodensity: Some(markers[0].1.get_untracked()),
            margin_irregularity: Some(markers[1].1.get_untracked()),
            blend_sign: Some(markers[2].1.get_untracked()),
            fluid_level: Some(markers[3].1.get_untracked()),
            labelled: Some(true),
        };
        spawn_local(async move {
            match api::patch::<_, Scan>(&format!("/scans/{id}"), &patch).await {
                Ok(updated) => {
                    error.set(None);
                    saved.set(true);
                    scans.update(|s| {
                        if let Some(slot) = s.iter_mut().find(|s| s.id == updated.id) {
                            *slot = updated;
                        }
                    });
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let on_key = move |ev: web_sys::KeyboardEvent| {
        if ev.key() == "Escape" {
            on_close();
        }
    };
    view! {
        <div class="overlay" on:keydown=on_key on:click=move |ev: web_sys::MouseEvent| {
            if ev.target().and_then(|t| t.dyn_into::<web_sys::Element>().ok()).is_some_and(|e| e.class_list().contains("overlay")) { on_close(); }
        }>
            <div class="dialog" role="dialog" aria-label="Scan">
                <img class="full" alt=format!("scan {id}") src=move || format!("{}?window={}", scan.image_url, api::enc(&window.get())) />
                <form class="editor" on:submit=save>
                    <h2>{format!("Scan {id}")}</h2>
                    <p class="muted small">{format!("{} · slice {} · {} · {}x{} · {}", scan.source_name, scan.slice_index, scan.format, scan.columns, scan.rows, scan.unit)}</p>
                    {scan.patient.clone().map(|p| view! { <p class="muted small">{format!("patient {p}{}", scan.instance.map(|n| format!(" · instance {n}")).unwrap_or_default())}</p> })}
                    {(!scan.labelled).then(|| view! { <p class="warning-text small">"Unlabelled: saving these markers labels it."</p> })}
                    <label>"Site " <input type="number" min="0" name="site" class="short" node_ref=first_field prop:value=move || site.get().to_string()
                        on:input=move |ev| { saved.set(false); site.set(event_target_value(&ev).parse().unwrap_or(0)); } /></label>
                    {markers.into_iter().map(|(label, value)| view! {
                        <label class="check"><input type="checkbox" name=label prop:checked=value
                            on:change=move |ev| { saved.set(false); value.set(event_target_checked(&ev)); } />{label}</label>
                    }).collect_view()}
                    <ErrorBox error=error />
                    <div class="inline">
                        <button type="submit">"Save labels"</button>
                        {move || saved.get().then(|| view! { <span class="ok">"Saved"</span> })}
                        {scan.has_dicom.then(|| view! { <a href=format!("{}/scans/{id}/dicom", api::BASE) download>"De-identified DICOM"</a> })}
                        <button type="button" class="link" on:click=move |_| on_close()>"Close"</button>
                    </div>
                </form>
            </div>
        </div>
    }
}
