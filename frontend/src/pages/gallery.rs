//! Samples gallery: a training run's samples as a grid by class, one checkpoint at a time (a step
//! slider), or one sampling run's; click for the full-size view (arrow keys to step through, Esc to close).
//! Below them, where they exist, the counterfactual pairs (Fig. 10) and denoising trajectories (Fig. 11)
//! made from the same checkpoints.

use std::collections::BTreeSet;

use leptos::prelude::*;
use leptos_router::hooks::query_signal;
use repdiff_api::{Artifact, JobPage};

use crate::api;
use crate::util::loaded;

fn meta_i64(a: &Artifact, key: &str) -> Option<i64> {
    a.meta.get(key).and_then(|v| v.as_i64())
}

#[component]
pub fn Gallery() -> impl IntoView {
    let (from_job, set_from_job) = query_signal::<i64>("from_job");
    let (job, _) = query_signal::<i64>("job");
    let (step_q, set_step) = query_signal::<i64>("step");
    let (class_q, set_class) = query_signal::<i64>("class");
    let (open, set_open) = query_signal::<i64>("image");
    let runs = LocalResource::new(|| api::get::<JobPage>("/jobs?limit=200"));
    let samples = LocalResource::new(move || {
        let filter = match (job.get(), from_job.get()) {
            (Some(j), _) => Some(format!("job={j}")),
            (None, Some(f)) => Some(format!("from_job={f}")),
            _ => None,
        };
        async move {
            let Some(f) = filter else { return Ok(None) };
            let list = |kind: &str| {
                let path = format!("/samples?{f}&kind={kind}&limit=1000");
                async move { api::get::<Vec<Artifact>>(&path).await }
            };
            Ok(Some(Found {
                samples: list("sample").await?,
                counterfactuals: list("counterfactual").await?,
                trajectories: list("trajectory").await?,
            }))
        }
    });
    view! {
        <h1>"Samples"</h1>
        <div class="inline">
            <label>"Training run "
                <select name="from_job" on:change=move |ev| { set_step.set(None); set_from_job.set(event_target_value(&ev).parse().ok()); }>
                    <option value="">"Pick a training run"</option>
                    {move || runs.get().and_then(|r| r.ok()).map(|p| p.jobs).unwrap_or_default().into_iter()
                        .filter(|j| matches!(j.kind.as_str(), "pretrain" | "finetune")).map(|j| {
                        let id = j.id;
                        view! { <option value=id selected=move || from_job.get() == Some(id)>{format!("run #{id} {} ({})", j.kind, j.state.as_str())}</option> }
                    }).collect_view()}
                </select>
            </label>
            {move || job.get().map(|j| view! { <span class="muted">{format!("sampling run #{j}")}</span> })}
        </div>
        {move || loaded(samples.get(), move |found: Option<Found>| {
            let Some(Found { samples: all, counterfactuals, trajectories }) = found else {
                return view! { <p class="empty">"Pick a training run to see the samples drawn from its checkpoints."</p> }.into_any();
            };
            if all.is_empty() && counterfactuals.is_empty() && trajectories.is_empty() {
                return view! { <p class="empty">"No samples yet: launch a sample run from this training run's checkpoint."</p> }.into_any();
            }
            let steps: Vec<i64> = all.iter().chain(&counterfactuals).chain(&trajectories)
                .filter_map(|a| meta_i64(a, "checkpoint_step")).collect::<BTreeSet<_>>().into_iter().collect();
            let classes: Vec<Option<i64>> = all.iter().map(|a| meta_i64(a, "class")).collect::<BTreeSet<_>>().into_iter().collect();
            let step = step_q.get().filter(|s| steps.contains(s)).or(steps.last().copied());
            let index = step.and_then(|s| steps.iter().position(|x| *x == s)).unwrap_or(0);
            let only_class = class_q.get();
            let shown: Vec<Artifact> = all
                .iter()
                .filter(|a| step.is_none() || meta_i64(a, "checkpoint_step") == step)
                .filter(|a| only_class.is_none() || meta_i64(a, "class") == only_class)
                .cloned()
                .collect();
            let at_step = |list: &[Artifact]| -> Vec<Artifact> {
                list.iter().filter(|a| step.is_none() || meta_i64(a, "checkpoint_step") == step).cloned().collect()
            };
            let counterfactuals = newest_run_first(at_step(&counterfactuals));
            let trajectories = newest_run_first(at_step(&trajectories));
            // The full-size view steps through everything on the page, samples first.
            let viewable: Vec<Artifact> =
                shown.iter().chain(&counterfactuals).chain(&trajectories).cloned().collect();
            let order: Vec<i64> = viewable.iter().map(|a| a.id).collect();
            let steps_for_slider = steps.clone();
            view! {
                <div class="inline">
                    {(steps.len() > 1).then(|| view! {
                        <label>"Checkpoint step "
                            <input type="range" name="step" min="0" max=steps.len() - 1 step="1" prop:value=index.to_string()
                                on:input=move |ev| {
                                    let i: usize = event_target_value(&ev).parse().unwrap_or(0);
                                    set_step.set(steps_for_slider.get(i).copied());
                                } />
                        </label>
                    })}
                    <span class="num">{step.map(|s| format!("step {s}")).unwrap_or_default()}</span>
                    <label>"Class "
                        <select name="class" on:change=move |ev| set_class.set(event_target_value(&ev).parse().ok())>
                            <option value="" selected=only_class.is_none()>"All"</option>
                            {classes.iter().flatten().map(|c| { let c = *c; view! { <option value=c selected=only_class == Some(c)>{c}</option> } }).collect_view()}
                        </select>
                    </label>
                    <span class="muted">{format!("{} images", shown.len())}</span>
                </div>
                {(shown.is_empty() && !all.is_empty()).then(|| view! { <p class="empty">"No samples at this checkpoint."</p> })}
                {classes.into_iter().filter(|c| only_class.is_none() || *c == only_class).map(|c| {
                    let row: Vec<Artifact> = shown.iter().filter(|a| meta_i64(a, "class") == c).cloned().collect();
                    view! {
                        <section class="class-row">
                            <h2>{c.map(|c| format!("Class {c}{}", match c { 0 => " (no hematoma)", 1 => " (hematoma)", _ => "" })).unwrap_or_else(|| "Unconditional".into())}</h2>
                            <div class="thumbs">
                                {row.into_iter().map(|a| {
                                    let id = a.id;
                                    view! { <button class="thumb" on:click=move |_| set_open.set(Some(id))><img alt=format!("sample {id}") src=a.url.clone() loading="lazy" /></button> }
                                }).collect_view()}
                            </div>
                        </section>
                    }
                }).collect_view()}
                <Counterfactuals rows=counterfactuals open=set_open />
                <Trajectories grids=trajectories open=set_open />
                {move || open.get().and_then(|id| {
                    let pos = order.iter().position(|x| *x == id)?;
                    let a = viewable[pos].clone();
                    let prev = pos.checked_sub(1).map(|p| order[p]);
                    let next = order.get(pos + 1).copied();
                    let overlay = NodeRef::<leptos::html::Div>::new();
                    Effect::new(move |_| {
                        if let Some(el) = overlay.get() {
                            let _ = el.focus();
                        }
                    });
                    Some(view! {
                        <div class="overlay" tabindex="0" node_ref=overlay
                            on:keydown=move |ev: web_sys::KeyboardEvent| match ev.key().as_str() {
                                "Escape" => set_open.set(None),
                                "ArrowLeft" if prev.is_some() => set_open.set(prev),
                                "ArrowRight" if next.is_some() => set_open.set(next),
                                _ => {}
                            }>
                            <div class="dialog" role="dialog" aria-label="Sample">
                                <img class="full pixelated" alt="sample" src=a.url.clone() />
                                <p class="muted">{caption(&a)}</p>
                                <div class="inline">
                                    <button disabled=prev.is_none() on:click=move |_| set_open.set(prev)>"← Previous"</button>
                                    <button disabled=next.is_none() on:click=move |_| set_open.set(next)>"Next →"</button>
                                    <a href=a.url.clone() download>"Download"</a>
                                    <button class="link" on:click=move |_| set_open.set(None)>"Close"</button>
                                </div>
                            </div>
                        </div>
                    })
                })}
            }.into_any()
        })}
    }
}

/// What the gallery shows of a run.
#[derive(Clone)]
struct Found {
    samples: Vec<Artifact>,
    counterfactuals: Vec<Artifact>,
    trajectories: Vec<Artifact>,
}

/// The newest run's figures first, each run's in their order.
fn newest_run_first(mut list: Vec<Artifact>) -> Vec<Artifact> {
    list.sort_by_key(|a| (std::cmp::Reverse(a.job_id), meta_i64(a, "index"), a.id));
    list
}

/// What the full-size view says of an image.
fn caption(a: &Artifact) -> String {
    let step = meta_i64(a, "checkpoint_step").map(|c| c.to_string()).unwrap_or("-".into());
    match a.kind.as_str() {
        "figure" => {
            let label = match meta_i64(a, "label") {
                Some(0) => "no hematoma".to_string(),
                Some(1) => "hematoma".into(),
                Some(l) => format!("label {l}"),
                None => "unlabelled".into(),
            };
            let diff = a.meta.get("mean_abs_difference").and_then(|v| v.as_f64());
            format!(
                "counterfactual: scan {} · {label} · t = {} · mean |difference| {} · checkpoint step {step}",
                meta_i64(a, "index").unwrap_or(0),
                meta_i64(a, "t").map(|t| t.to_string()).unwrap_or("-".into()),
                diff.map(|d| format!("{d:.4}")).unwrap_or("-".into())
            )
        }
        "trajectory" => {
            let steps = a
                .meta
                .get("timesteps")
                .and_then(|v| v.as_array())
                .map(|t| t.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "));
            format!("trajectory: t = {} · checkpoint step {step}", steps.unwrap_or_default())
        }
        _ => format!(
            "class {} · checkpoint step {step} · sample {}",
            meta_i64(a, "class").map(|c| c.to_string()).unwrap_or("-".into()),
            meta_i64(a, "index").map(|c| c.to_string()).unwrap_or("-".into())
        ),
    }
}

/// A figure of the gallery: opens the full-size view; its caption links to the run that made it.
fn figure(a: Artifact, class: &'static str, open: SignalSetter<Option<i64>>) -> impl IntoView {
    let id = a.id;
    let run = a.job_id.map(|j| view! { " · " <a href=format!("/runs/{j}")>{format!("run #{j}")}</a> });
    view! {
        <figure class=class>
            <button class="figure-open" on:click=move |_| open.set(Some(id))>
                <img class="grid-image" alt=class src=a.url.clone() loading="lazy" />
            </button>
            <figcaption class="muted small">{caption(&a)}{run}</figcaption>
        </figure>
    }
}

/// Counterfactual rows (Fig. 10), a figure per scan, newest run first.
#[component]
fn Counterfactuals(rows: Vec<Artifact>, open: SignalSetter<Option<i64>>) -> impl IntoView {
    (!rows.is_empty()).then(|| {
        let runs = rows.iter().filter_map(|a| a.job_id).collect::<BTreeSet<_>>().len();
        view! {
            <section class="card" id="counterfactuals">
                <h2>"Counterfactual pairs"</h2>
                <p class="muted small">{format!(
                    "Each row: the scan | denoised as class 0 | as class 1 | their difference (red: brighter under class 1). {} scans from {runs} run{}.",
                    rows.len(), if runs == 1 { "" } else { "s" })}</p>
                {rows.into_iter().map(|a| figure(a, "counterfactual", open)).collect_view()}
            </section>
        }
    })
}

/// Denoising trajectories (Fig. 11): a sampling run's x0 predictions, a row per sample.
#[component]
fn Trajectories(grids: Vec<Artifact>, open: SignalSetter<Option<i64>>) -> impl IntoView {
    (!grids.is_empty()).then(|| view! {
        <section class="card" id="trajectories">
            <h2>"Denoising trajectories"</h2>
            <p class="muted small">"The model's prediction of the clean image as sampling goes on, noisiest first; a row per sample."</p>
            {grids.into_iter().map(|a| figure(a, "trajectory", open)).collect_view()}
        </section>
    })
}
