//! One run: live state through server-sent events, progress, cancel/retry, parameters and result, the
//! training curves (smoothing in the URL), its samples and artifacts, and its log tail.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::{query_signal, use_navigate};
use repdiff_api::{Artifact, Job, JobPage, JobState, LogLine, MetricSeries};
use send_wrapper::SendWrapper;
use wasm_bindgen::prelude::*;

use crate::api::{self, ApiError};
use crate::chart::{LineChart, Series};
use crate::util::{ErrorBox, ago, bytes, duration, loaded, param_id, state_badge};

#[component]
pub fn RunPage() -> impl IntoView {
    let id = param_id("id");
    move || id.get().map(|id| view! { <RunView id=id /> })
}

/// Follows a job through `GET /jobs/{id}/events` until it is final.
fn follow(id: i64, job: RwSignal<Option<Result<Job, ApiError>>>) {
    let Ok(source) = web_sys::EventSource::new(&format!("{}/jobs/{id}/events", api::BASE)) else { return };
    let source = SendWrapper::new(source);
    let closer = source.clone();
    let on_job = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
        let Some(text) = ev.data().as_string() else { return };
        if let Ok(update) = serde_json::from_str::<Job>(&text) {
            if update.state.is_final() {
                closer.close();
            }
            job.set(Some(Ok(update)));
        }
    });
    let _ = source.add_event_listener_with_callback("job", on_job.as_ref().unchecked_ref());
    let on_job = SendWrapper::new(on_job);
    on_cleanup(move || {
        source.close();
        drop(on_job);
    });
}

#[component]
fn RunView(id: i64) -> impl IntoView {
    let job = RwSignal::new(None::<Result<Job, ApiError>>);
    spawn_local(async move { job.set(Some(api::get::<Job>(&format!("/jobs/{id}")).await)) });
    follow(id, job);
    let action_error = RwSignal::new(None::<ApiError>);
    let act = move |what: &'static str| {
        spawn_local(async move {
            match api::post::<_, Job>(&format!("/jobs/{id}/{what}"), &serde_json::json!({})).await {
                Ok(j) => {
                    let restarted = what == "retry";
                    job.set(Some(Ok(j)));
                    action_error.set(None);
                    if restarted {
                        // A retried job runs again: follow its new events.
                        follow(id, job);
                    }
                }
                Err(e) => action_error.set(Some(e)),
            }
        });
    };
    // Metrics and logs refresh as the job moves (at most every two seconds), and once more at its end.
    let version = Memo::new(move |_| {
        job.with(|j| match j {
            Some(Ok(j)) => (j.state, j.progress.as_ref().map(|p| p.step).unwrap_or(0)),
            _ => (JobState::Queued, 0),
        })
    });
    let refresh = RwSignal::new(0u32);
    let last = StoredValue::new(0.0f64);
    Effect::new(move |_| {
        let (state, _) = version.get();
        let now = js_sys::Date::now();
        if state.is_final() || now - last.get_value() > 2000.0 {
            last.set_value(now);
            refresh.update(|n| *n += 1);
        }
    });
    view! {
        {move || loaded(job.get(), move |j: Job| view! {
            <RunHeader job=j on_cancel=move || act("cancel") on_retry=move || act("retry") />
        })}
        <ErrorBox error=action_error />
        <Show when=move || job.with(|j| matches!(j, Some(Ok(_))))>
            <Tags id=id job=job />
            <Charts id=id refresh=refresh job=job />
            <ClassifyResult job=job />
            <ProbeResult job=job />
            <SupervisedResult job=job />
            <EvaluateResult job=job />
            <Stages id=id job=job />
            <ReproduceResult job=job />
            <Outputs id=id refresh=refresh job=job />
            <Logs id=id refresh=refresh />
        </Show>
    }
}

#[component]
fn RunHeader(
    job: Job,
    on_cancel: impl Fn() + Send + Sync + 'static,
    on_retry: impl Fn() + Send + Sync + 'static,
) -> impl IntoView {
    let id = job.id;
    let progress = job.progress.clone();
    let fraction = progress.as_ref().filter(|p| p.total > 0).map(|p| p.step as f64 / p.total as f64);
    let took = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => format!("took {}", duration((f - s).num_seconds())),
        (Some(s), None) => format!("running for {}", duration((chrono::Utc::now() - s).num_seconds())),
        _ => String::new(),
    };
    let can_cancel = !job.state.is_final() && !job.cancel_requested;
    let can_retry = matches!(job.state, JobState::Failed | JobState::Cancelled);
    let succeeded = job.state == JobState::Succeeded;
    let trained = matches!(job.kind.as_str(), "pretrain" | "finetune") && succeeded;
    let pretrained = job.kind == "pretrain" && succeeded;
    // What a run without progress is doing: waiting on its inputs, on a worker, or nothing any more.
    let idle = match job.state {
        JobState::Queued if job.kind == "reproduce" => {
            "waiting for its stages (below) to finish; then it writes the tables"
        }
        JobState::Queued if !job.depends_on.is_empty() => "waiting for the runs it needs (and then a worker)",
        JobState::Queued => "waiting for a worker",
        JobState::Running => "starting",
        _ => "ended before reporting progress",
    };
    view! {
        <div class="titlebar">
            <h1>{format!("Run #{id} · {}", job.kind)}</h1>
            {state_badge(job.state)}
            <span class="muted">{format!("attempt {} of {}", job.attempt, job.max_attempts)}</span>
            <span class="spacer"></span>
            {can_cancel.then(|| view! { <button class="danger" on:click=move |_| on_cancel()>"Cancel"</button> })}
            {job.cancel_requested.then(|| (!job.state.is_final()).then(|| view! { <span class="muted">"cancelling…"</span> }))}
            {can_retry.then(|| view! { <button on:click=move |_| on_retry()>"Retry"</button> })}
            <a class="button secondary" href=format!("/runs/new?from={id}")>"Clone"</a>
            {trained.then(|| view! { <a class="button" href=format!("/runs/new?kind=sample&checkpoint={id}")>"Sample from it"</a> })}
            {pretrained.then(|| view! { <a class="button secondary" href=format!("/runs/new?kind=finetune&checkpoint={id}")>"Fine-tune from it"</a> })}
        </div>
        <p class="muted">
            {format!("by {} · created {}", job.owner.clone().unwrap_or_else(|| "-".into()), ago(job.created_at))}
            {job.experiment_id.map(|e| view! { " · " <a href=format!("/runs?experiment={e}")>{format!("experiment {e}")}</a> })}
            {(!took.is_empty()).then(|| format!(" · {took}"))}
            {job.pipeline_id.map(|p| view! {
                {format!(" · stage {} of pipeline ", job.stage.clone().unwrap_or_default())}
                <a href=format!("/runs/{p}")>{format!("#{p}")}</a>
            })}
            {(!job.depends_on.is_empty()).then(|| view! {
                " · after "
                {job.depends_on.iter().map(|d| view! { <a href=format!("/runs/{d}")>{format!("#{d}")}</a> " " }).collect_view()}
            })}
        </p>
        <div class="progress-row">
            <progress class="run-progress" max="1" value=fraction.unwrap_or(0.0)></progress>
            <span class="progress-text">{progress.map(|p| format!("{} / {} {}", p.step, p.total, p.message)).unwrap_or_else(|| idle.into())}</span>
        </div>
        {job.error.clone().map(|e| view! { <div class="error" role="alert"><strong>"Failed: "</strong>{e}</div> })}
        <div class="columns">
            <section class="card"><h2>"Parameters"</h2><pre class="json">{serde_json::to_string_pretty(&job.params).unwrap_or_default()}</pre></section>
            {job.result.clone().map(|r| view! { <section class="card"><h2>"Result"</h2><pre class="json">{serde_json::to_string_pretty(&r).unwrap_or_default()}</pre></section> })}
        </div>
    }
}

/// The run's tags: × removes one, Enter in the box adds them (commas separate several).
#[component]
fn Tags(id: i64, job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    let tags =
        move || job.with(|j| j.as_ref().and_then(|j| j.as_ref().ok()).map(|j| j.tags.clone()).unwrap_or_default());
    let draft = RwSignal::new(String::new());
    let error = RwSignal::new(None::<ApiError>);
    let save = move |list: Vec<String>| {
        let list = match repdiff_api::check_tags(&list) {
            Ok(list) => list,
            Err(message) => return error.set(Some(ApiError { status: 422, code: "invalid_request".into(), message })),
        };
        spawn_local(async move {
            let patch = repdiff_api::JobPatch { tags: Some(list) };
            match api::patch::<_, Job>(&format!("/jobs/{id}"), &patch).await {
                Ok(j) => {
                    error.set(None);
                    draft.set(String::new());
                    job.set(Some(Ok(j)));
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <div class="inline tags">
            "Tags: "
            {move || tags().into_iter().map(|t| {
                let gone = t.clone();
                view! {
                    <span class="tagchip">
                        <a href=format!("/runs?tag={}", api::enc(&t))>{t.clone()}</a>
                        <button class="link" aria-label=format!("remove tag {t}")
                            on:click=move |_| save(tags().into_iter().filter(|x| *x != gone).collect())>"×"</button>
                    </span>
                }
            }).collect_view()}
            <input name="add_tag" class="short" placeholder="add tag" prop:value=draft
                on:input=move |ev| draft.set(event_target_value(&ev))
                on:keydown=move |ev: web_sys::KeyboardEvent| {
                    if ev.key() == "Enter" {
                        let mut list = tags();
                        list.extend(draft.get_untracked().split(',').map(str::to_string));
                        save(list);
                    }
                } />
        </div>
        <ErrorBox error=error />
    }
}

#[component]
fn Charts(id: i64, refresh: RwSignal<u32>, job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    // A classifier's metrics are a sweep over timesteps (not smoothed), with the chosen t marked.
    let classify = move || job.with(|j| matches!(j, Some(Ok(j)) if j.kind == "classify"));
    let marker = Signal::derive(move || {
        job.with(|j| {
            let t = j.as_ref()?.as_ref().ok()?.result.as_ref()?.get("chosen_t")?.as_f64()?;
            Some((t, format!("chosen t = {t}")))
        })
    });
    let (smooth_q, set_smooth) = query_signal::<f64>("smooth");
    let (metric_q, set_metric) = query_signal::<String>("metric");
    let smoothing =
        Signal::derive(move || smooth_q.get().unwrap_or(if classify() { 0.0 } else { 0.6 }).clamp(0.0, 0.99));
    let metrics = LocalResource::new(move || {
        refresh.track();
        async move { api::get::<Vec<MetricSeries>>(&format!("/jobs/{id}/metrics")).await }
    });
    // The last good answer stays on screen while a refresh is in flight.
    let shown = RwSignal::new(Vec::<MetricSeries>::new());
    Effect::new(move |_| {
        if let Some(Ok(m)) = metrics.get() {
            shown.set(m);
        }
    });
    let main_name = Memo::new(move |_| {
        metric_q.get().or_else(|| {
            shown.with(|m| {
                ["loss", "val_f1"]
                    .iter()
                    .find_map(|want| m.iter().find(|s| s.name == *want))
                    .or(m.first())
                    .map(|s| s.name.clone())
            })
        })
    });
    let x_label = move || if classify() { "timestep" } else { "step" };
    let main = Signal::derive(move || {
        let name = main_name.get();
        shown.with(|m| m.iter().filter(|s| Some(&s.name) == name.as_ref()).map(Series::from_metric).collect::<Vec<_>>())
    });
    view! {
        <Show when=move || !shown.with(Vec::is_empty)>
            <section class="card" id="charts">
                <div class="titlebar">
                    <h2>{move || if classify() { "Metrics over the timestep" } else { "Training curves" }}</h2>
                    <span class="spacer"></span>
                    <label>"Metric "
                        <select name="metric" on:change=move |ev| set_metric.set(Some(event_target_value(&ev)))>
                            {move || shown.get().into_iter().map(|s| {
                                let n = s.name.clone();
                                view! { <option value=s.name.clone() selected=move || main_name.get().as_deref() == Some(n.as_str())>{s.name.clone()}</option> }
                            }).collect_view()}
                        </select>
                    </label>
                    <label>"Smoothing "
                        <input type="range" name="smoothing" min="0" max="0.99" step="0.01" prop:value=move || smoothing.get().to_string()
                            on:input=move |ev| set_smooth.set(event_target_value(&ev).parse().ok()) />
                        <span class="num">{move || format!("{:.2}", smoothing.get())}</span>
                    </label>
                </div>
                <div class="chart-main" data-metric=move || main_name.get().unwrap_or_default()>
                    {move || view! { <LineChart series=main smoothing=smoothing x_label=x_label() marker=marker /> }}
                </div>
                {move || shown.with(|m| checkpoint_table(m)).map(|t| view! { <CheckpointMetrics table=t /> })}
                // A small chart of one point says nothing its table (the test result, a checkpoint's
                // metrics) does not: those stay in the metric menu.
                <div class="small-multiples">
                    {move || shown.get().into_iter().filter(|s| Some(&s.name) != main_name.get().as_ref() && s.steps.len() > 1).map(|s| {
                        let name = s.name.clone();
                        let series = vec![Series::from_metric(&s)];
                        view! {
                            <figure class="chart-small">
                                <figcaption><button class="link" on:click=move |_| set_metric.set(Some(name.clone()))>{s.name.clone()}</button></figcaption>
                                <LineChart series=series smoothing=smoothing x_label=x_label() marker=marker />
                            </figure>
                        }
                    }).collect_view()}
                </div>
            </section>
        </Show>
    }
}

/// A classification run: the validation sweep as a table (the chosen timestep marked) and the test result
/// at that timestep with its bootstrap intervals, the sequential run's agreement with the fixed budget
/// when measured, and its confusion matrix.
#[component]
fn ClassifyResult(job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    use repdiff_api::ClassifyReport;
    let report = move || {
        job.with(|j| {
            let j = j.as_ref()?.as_ref().ok()?;
            (j.kind == "classify").then(|| serde_json::from_value::<ClassifyReport>(j.result.clone()?).ok())?
        })
    };
    let pct = |v: f64| format!("{:.1}", v * 100.0);
    move || {
        report().map(|r| {
            let chosen = r.chosen_t;
            view! {
                <section class="card" id="classification">
                    <h2>{format!("Classification: timestep {chosen} chosen on validation (best F1)")}</h2>
                    <div class="columns">
                        <table class="grid sweep">
                            <thead><tr><th>"t"</th><th>"accuracy %"</th><th>"precision %"</th><th>"recall %"</th><th>"F1 %"</th><th>"forwards/image"</th></tr></thead>
                            <tbody>
                                {r.validation.iter().map(|row| {
                                    let m = &row.metrics;
                                    view! {
                                        <tr class=if row.t == chosen { "chosen" } else { "" }>
                                            <td class="num">{row.t}</td><td class="num">{pct(m.accuracy)}</td><td class="num">{pct(m.precision)}</td>
                                            <td class="num">{pct(m.recall)}</td><td class="num">{pct(m.f1)}</td>
                                            <td class="num">{format!("{:.1}", row.forwards_per_image)}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                        {r.test.map(|row| {
                            let m = row.metrics;
                            view! {
                                <div class="test-result">
                                    <h3>{format!("Test at t = {}", row.t)}</h3>
                                    {metrics_table(&m, row.intervals.as_ref())}
                                    <p class="muted">{format!("{:.1} forward passes per image", row.forwards_per_image)}</p>
                                    {row.agreement.map(|a| view! {
                                        <p class="agreement">{format!(
                                            "Sequential stopping decided {}% of the images as {} draws do, with {}% of their forward passes (fixed-budget accuracy {}%).",
                                            pct(a.agreement), a.fixed_draws, pct(a.forwards_fraction), pct(a.fixed_accuracy))}</p>
                                        {(!a.alternatives.is_empty()).then(|| view! {
                                            <table class="grid stopping-rules">
                                                <caption>"Other stopping rules on the same draws"</caption>
                                                <thead><tr><th>"rule"</th><th>"alpha"</th><th>"same decision %"</th><th>"forward passes %"</th><th>"accuracy %"</th></tr></thead>
                                                <tbody>
                                                    {a.alternatives.iter().map(|p| view! {
                                                        <tr><td>{p.rule.clone()}</td><td class="num">{p.alpha}</td><td class="num">{pct(p.agreement)}</td>
                                                            <td class="num">{pct(p.forwards_fraction)}</td><td class="num">{pct(p.accuracy)}</td></tr>
                                                    }).collect_view()}
                                                </tbody>
                                            </table>
                                        })}
                                    })}
                                    {confusion_table(&m.confusion)}
                                </div>
                            }
                        })}
                    </div>
                </section>
            }
        })
    }
}

/// Test metrics in percent with their bootstrap intervals (when the run has them).
fn metrics_table(m: &repdiff_api::ClassMetrics, i: Option<&repdiff_api::Intervals>) -> impl IntoView + use<> {
    let pct = |v: f64| format!("{:.1}", v * 100.0);
    let level = i.map(|i| format!("{:.0}% interval", 100.0 * i.level)).unwrap_or_else(|| "interval".into());
    let rows = [
        ("accuracy", m.accuracy, i.map(|i| i.accuracy)),
        ("precision", m.precision, i.map(|i| i.precision)),
        ("recall", m.recall, i.map(|i| i.recall)),
        ("F1", m.f1, i.map(|i| i.f1)),
    ];
    view! {
        <table class="grid test-metrics">
            <thead><tr><th>"metric"</th><th>"%"</th><th>{level}</th></tr></thead>
            <tbody>
                {rows.into_iter().map(|(name, value, range)| view! {
                    <tr><td>{name}</td><td class="num">{pct(value)}</td>
                        <td class="num">{range.map(|[lo, hi]| format!("{} - {}", pct(lo), pct(hi))).unwrap_or_else(|| "-".into())}</td></tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

/// A confusion matrix: rows are the truth, columns the prediction, the diagonal marked.
fn confusion_table(confusion: &[Vec<usize>]) -> impl IntoView + use<> {
    let confusion = confusion.to_vec();
    view! {
        <table class="grid confusion">
            <thead><tr><th>"truth \\ predicted"</th>
                {(0..confusion.len()).map(|c| view! { <th>{c}</th> }).collect_view()}</tr></thead>
            <tbody>
                {confusion.iter().enumerate().map(|(t, cells)| view! {
                    <tr><th>{t}</th>{cells.iter().enumerate().map(|(p, n)| view! {
                        <td class=if p == t { "num hit" } else { "num" }>{*n}</td>
                    }).collect_view()}</tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

/// A baseline's test metrics with their intervals, beside its confusion matrix.
fn test_section(t: repdiff_api::ProbeTest) -> impl IntoView {
    view! {
        <div class="columns">
            <div class="test-result"><h3>"Test"</h3>{metrics_table(&t.metrics, Some(&t.intervals))}</div>
            <div>{confusion_table(&t.metrics.confusion)}</div>
        </div>
    }
}

/// A linear-probe run: the strength chosen on validation and the test metrics with their intervals.
#[component]
fn ProbeResult(job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    let report = move || {
        job.with(|j| {
            let j = j.as_ref()?.as_ref().ok()?;
            (j.kind == "probe").then(|| serde_json::from_value::<repdiff_api::ProbeReport>(j.result.clone()?).ok())?
        })
    };
    move || {
        report().map(|r| {
            view! {
                <section class="card" id="probe">
                    <h2>{format!("Linear probe on {}: L2 strength {} chosen on validation (F1 {:.1}%)",
                        if r.features.starts_with("dinov2") { "DINOv2 ViT-S/14 features" } else { "the representation encoder" },
                        r.lambda, r.validation.f1 * 100.0)}</h2>
                    {r.test.map(test_section)}
                </section>
            }
        })
    }
}

/// A supervised baseline run: the epoch kept and the test metrics with their intervals (its loss and
/// validation curves are among the run's charts).
#[component]
fn SupervisedResult(job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    let report = move || {
        job.with(|j| {
            let j = j.as_ref()?.as_ref().ok()?;
            (j.kind == "supervised")
                .then(|| serde_json::from_value::<repdiff_api::SupervisedReport>(j.result.clone()?).ok())?
        })
    };
    move || {
        report().map(|r| {
            view! {
                <section class="card" id="supervised">
                    <h2>{format!(
                        "{}: epoch {} of {} kept (validation F1 {:.1}%)",
                        r.architecture, r.best_epoch, r.epochs, r.validation.f1 * 100.0
                    )}</h2>
                    <p class="muted small">{format!("{} parameters, trained from scratch", r.parameters)}</p>
                    {r.test.map(test_section)}
                </section>
            }
        })
    }
}

/// The column names of an evaluation: the field's names with the pretrained extractor, else names that
/// say the distances live in a random network's feature space.
/// A pipeline's stages (a `reproduce` run), each a run of its own: its kind, state and progress, and the
/// stages it waits on (the graph, as its edges); live while the pipeline is not final.
#[component]
fn Stages(id: i64, job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    let pipeline = move || job.with(|j| matches!(j, Some(Ok(j)) if j.kind == "reproduce"));
    let finished = move || job.with(|j| matches!(j, Some(Ok(j)) if j.state.is_final()));
    let tick = RwSignal::new(0u32);
    let stages = LocalResource::new(move || {
        tick.track();
        let wanted = pipeline();
        async move {
            match wanted {
                true => api::get::<JobPage>(&format!("/jobs?pipeline={id}&limit=200")).await.map(|p| p.jobs),
                false => Ok(Vec::new()),
            }
        }
    });
    let timer = StoredValue::new_local(None::<leptos::leptos_dom::helpers::IntervalHandle>);
    Effect::new(move |_| {
        let live = pipeline() && !finished();
        if let Some(h) = timer.get_value() {
            h.clear();
        }
        let every = std::time::Duration::from_secs(2);
        timer.set_value(live.then(|| set_interval_with_handle(move || tick.update(|n| *n += 1), every).ok()).flatten());
        // Once more at the end: the last stages' final states.
        tick.update(|n| *n += 1);
    });
    on_cleanup(move || {
        if let Some(h) = timer.get_value() {
            h.clear();
        }
    });
    move || {
        let list = stages.get().and_then(|r| r.ok()).unwrap_or_default();
        (!list.is_empty()).then(|| {
            let mut list = list;
            list.sort_by_key(|j| j.id);
            let name_of = |id: i64| -> String {
                list.iter()
                    .find(|j| j.id == id)
                    .and_then(|j| j.stage.clone())
                    .map(|s| s.split_once('/').map_or(s.clone(), |(_, n)| n.to_string()))
                    .unwrap_or_else(|| format!("#{id}"))
            };
            let count = |state: JobState| list.iter().filter(|j| j.state == state).count();
            let summary = format!(
                "{} stages: {} succeeded, {} running, {} queued{}",
                list.len(),
                count(JobState::Succeeded),
                count(JobState::Running),
                count(JobState::Queued),
                match count(JobState::Failed) + count(JobState::Cancelled) {
                    0 => String::new(),
                    n => format!(", {n} failed or cancelled (retry a failed stage: what waits on it follows)"),
                }
            );
            let rows = list
                .iter()
                .map(|j| {
                    let progress = j
                        .progress
                        .as_ref()
                        .filter(|p| p.total > 0 && !j.state.is_final())
                        .map(|p| format!("{} / {} {}", p.step, p.total, p.message))
                        .unwrap_or_default();
                    let took = match (j.started_at, j.finished_at) {
                        (Some(s), Some(f)) => duration((f - s).num_seconds()),
                        (Some(s), None) => format!("{} so far", duration((chrono::Utc::now() - s).num_seconds())),
                        _ => String::new(),
                    };
                    let waits = j.depends_on.iter().map(|&d| name_of(d)).collect::<Vec<_>>().join(", ");
                    view! {
                        <tr>
                            <td><a href=format!("/runs/{}", j.id)>{j.stage.clone().unwrap_or_default()}</a></td>
                            <td>{j.kind.clone()}</td>
                            <td>{state_badge(j.state)}</td>
                            <td class="small">{waits}</td>
                            <td class="small">{progress}</td>
                            <td class="num">{took}</td>
                        </tr>
                    }
                })
                .collect_view();
            view! {
                <section class="card" id="stages">
                    <h2>"Stages"</h2>
                    <p class="muted small">{summary}</p>
                    <table class="grid">
                        <thead><tr><th>"Stage"</th><th>"Kind"</th><th>"State"</th><th>"Waits on"</th><th>"Progress"</th><th>"Took"</th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                </section>
            }
        })
    }
}

/// A pipeline run (`reproduce`): Table 6 with its intervals, the class fidelity of both fine-tuned models'
/// samples, Table 5, and where the time went.
#[component]
fn ReproduceResult(job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    use repdiff_api::ReproduceReport;
    let report = move || {
        job.with(|j| {
            let j = j.as_ref()?.as_ref().ok()?;
            (j.kind == "reproduce").then(|| serde_json::from_value::<ReproduceReport>(j.result.clone()?).ok())?
        })
    };
    let pct = |v: f64| format!("{:.1}", v * 100.0);
    let with_interval = move |v: f64, i: Option<[f64; 2]>| match i {
        Some([lo, hi]) => format!("{} [{}, {}]", pct(v), pct(lo), pct(hi)),
        None => pct(v),
    };
    let model = |m: &str| if m == "rep" { "representation" } else { "unconditional" };
    move || {
        report().map(|r| {
            let fidelity = r.class_fidelity.clone();
            let table5 = r.table5.clone().unwrap_or_default();
            let pretrained = table5.first().is_some_and(|row| row.extractor == "inception-v3");
            let columns = evaluation_columns(pretrained);
            let timings = r.timings_s.clone();
            let first_seed = r.across_seeds.as_ref().map(|_| format!(" (seed {})", r.seed)).unwrap_or_default();
            let seeds_card = r.across_seeds.clone().map(|a| across_seeds_card(a, &r));
            view! {
                {seeds_card}
                <section class="card" id="table6">
                    <h2>{format!("Table 6: haematoma classification on the test part{first_seed}")}</h2>
                    <p class="muted small">{format!(
                        "Preset {}, seed {}, pre-training {} steps, fine-tuning {} steps, {} in all. Percentages with bootstrap 95% intervals; the diffusion classifiers' timesteps were chosen on validation.",
                        r.preset, r.seed, r.pretrain_steps, r.finetune_steps, duration(r.total_s as i64))}</p>
                    <div class="scroll"><table class="grid table6">
                        <thead><tr><th>"method"</th><th>"t"</th><th>"accuracy %"</th><th>"precision %"</th><th>"recall %"</th><th>"F1 %"</th><th>"forwards/image"</th></tr></thead>
                        <tbody>
                            {r.table6.iter().map(|row| {
                                let (m, i) = (&row.metrics, row.intervals.as_ref());
                                view! {
                                    <tr><td>{row.method.clone()}</td>
                                        <td class="num">{row.chosen_t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())}</td>
                                        <td class="num">{with_interval(m.accuracy, i.map(|i| i.accuracy))}</td>
                                        <td class="num">{with_interval(m.precision, i.map(|i| i.precision))}</td>
                                        <td class="num">{with_interval(m.recall, i.map(|i| i.recall))}</td>
                                        <td class="num">{with_interval(m.f1, i.map(|i| i.f1))}</td>
                                        <td class="num">{row.forwards_per_image.map(|f| format!("{f:.0}")).unwrap_or_else(|| "-".into())}</td></tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table></div>
                    {r.table6.iter().filter_map(|row| row.agreement.as_ref().map(|a| view! {
                        <p class="agreement small">{format!(
                            "{}: sequential stopping took the decision of all {} draws on {}% of the test slices with {}% of the forward passes.",
                            row.method, a.fixed_draws, pct(a.agreement), pct(a.forwards_fraction))}</p>
                    })).collect_view()}
                </section>
                {(!fidelity.is_empty()).then(|| view! {
                    <section class="card" id="class-fidelity">
                        <h2>"Class fidelity of the fine-tuned models' samples"</h2>
                        <p class="muted small">"Each fine-tuned model draws samples of both classes; the other model's diffusion classifier sorts them at the timestep it chose on real validation slices. Beside it, how the same classifier sorts the real test slices."</p>
                        <div class="scroll"><table class="grid fidelity">
                            <thead><tr><th>"samples of"</th><th>"guidance"</th><th>"judged by"</th><th>"t"</th><th>"class-0 samples called 0 %"</th><th>"class-1 samples called 1 %"</th><th>"real: class 0 called 0 %"</th><th>"real: class 1 called 1 %"</th></tr></thead>
                            <tbody>
                                {fidelity.iter().map(|f| {
                                    let cell = |v: &[f64], c: usize| v.get(c).map(|&x| pct(x)).unwrap_or_else(|| "-".into());
                                    view! {
                                        <tr><td>{model(&f.samples_of)}</td><td class="num">{f.guidance}</td><td>{model(&f.judge)}</td><td class="num">{f.t}</td>
                                            <td class="num">{cell(&f.samples_per_class, 0)}</td><td class="num">{cell(&f.samples_per_class, 1)}</td>
                                            <td class="num">{cell(&f.real_test_per_class, 0)}</td><td class="num">{cell(&f.real_test_per_class, 1)}</td></tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table></div>
                    </section>
                })}
                {(!table5.is_empty()).then(|| view! {
                    <section class="card" id="table5">
                        <h2>{format!("Table 5: generation against {} pre-training images", table5[0].real)}</h2>
                        {(!pretrained).then(|| view! { <p class="muted small">{format!(
                            "Features of {} (no pretrained Inception weights on the server): the distances compare these models with each other, not with published FIDs.",
                            table5[0].extractor)}</p> })}
                        <div class="scroll"><table class="grid table5">
                            <thead><tr><th>"pre-training"</th><th class="num">"samples"</th>
                                {columns.iter().map(|c| view! { <th class="num">{*c}</th> }).collect_view()}</tr></thead>
                            <tbody>{table5.iter().zip(["unconditional", "representation-conditional (the paper's)"]).map(|(m, name)| {
                                let values = [m.fid, m.sfid, m.inception_score, m.precision, m.recall, m.density, m.coverage];
                                view! { <tr><td>{name}</td><td class="num">{m.generated}</td>
                                    {values.iter().map(|v| view! { <td class="num">{format!("{v:.3}")}</td> }).collect_view()}</tr> }
                            }).collect_view()}</tbody>
                        </table></div>
                    </section>
                })}
                {(!timings.is_empty()).then(|| view! {
                    <details class="card">
                        <summary>"Where the time went"</summary>
                        <table class="grid timings">
                            <tbody>{timings.iter().map(|t| view! {
                                <tr><td>{t.step.clone()}</td><td class="num">{duration(t.seconds as i64)}</td></tr>
                            }).collect_view()}</tbody>
                        </table>
                    </details>
                })}
            }
        })
    }
}

/// A pipeline run over several seeds: each method's test accuracy and F1 per seed with mean and spread,
/// the two diffusion classifiers' paired difference, and Table 5's spread.
fn across_seeds_card(a: repdiff_api::AcrossSeeds, r: &repdiff_api::ReproduceReport) -> impl IntoView + use<> {
    let seeds = a.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let d = a.classifier_difference.clone();
    let interval = d
        .interval
        .map(|[lo, hi]| format!(" [{:+.1}, {:+.1}] (95% t interval over the seeds)", lo * 100.0, hi * 100.0))
        .unwrap_or_default();
    let pretrained = a.table5.first().is_some_and(|row| row.extractor == "inception-v3");
    let columns = evaluation_columns(pretrained);
    let n = a.seeds.len();
    view! {
        <section class="card" id="across-seeds">
            <h2>{format!("Table 6 over {n} seeds ({seeds})")}</h2>
            <p class="muted small">{format!(
                "Preset {}, pre-training {} steps, fine-tuning {} steps per seed; each seed draws its own phantoms, split, initial weights and noise. Test accuracy and F1 in %: mean ± sample standard deviation, then each seed's value.",
                r.preset, r.pretrain_steps, r.finetune_steps)}</p>
            <div class="scroll"><table class="grid seeds">
                <thead><tr><th>"method"</th><th>"accuracy %"</th><th>"per seed"</th><th>"F1 %"</th><th>"per seed"</th><th>"t per seed"</th></tr></thead>
                <tbody>{a.table6.iter().map(|row| {
                    let ts = row.chosen_t.iter().map(|t| t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())).collect::<Vec<_>>().join(" / ");
                    view! { <tr><td>{row.method.clone()}</td><td class="num">{row.accuracy.percent()}</td><td class="num">{row.accuracy.percent_each(false)}</td>
                        <td class="num">{row.f1.percent()}</td><td class="num">{row.f1.percent_each(false)}</td><td class="num">{ts}</td></tr> }
                }).collect_view()}</tbody>
            </table></div>
            <p class="difference">{format!(
                "Representation minus unconditional pre-training, diffusion classifier test accuracy: {:+.1} points on average{interval}; ahead in {} of {n} seeds ({}).",
                d.difference.mean * 100.0, d.ahead,
                d.difference.percent_each(true))}</p>
            {(!a.table5.is_empty()).then(|| view! {
                <h3>"Table 5 over the seeds (mean ± sd)"</h3>
                <div class="scroll"><table class="grid seeds-table5">
                    <thead><tr><th>"pre-training"</th>{columns.iter().map(|c| view! { <th class="num">{*c}</th> }).collect_view()}</tr></thead>
                    <tbody>{a.table5.iter().zip(["unconditional", "representation-conditional (the paper's)"]).map(|(row, name)| view! {
                        <tr><td>{name}</td>{row.metrics.iter().map(|s| view! { <td class="num">{s.plain()}</td> }).collect_view()}</tr>
                    }).collect_view()}</tbody>
                </table></div>
            })}
        </section>
    }
}

pub fn evaluation_columns(pretrained: bool) -> [&'static str; 7] {
    if pretrained {
        ["FID", "sFID", "IS", "Precision", "Recall", "Density", "Coverage"]
    } else {
        ["FD (random)", "sFD (random)", "Score (random)", "Precision", "Recall", "Density", "Coverage"]
    }
}

/// The generation metrics a training run measured at its checkpoints (its `eval` parameters), Table 5
/// style: a row per measured step, and per column the row of the best value (when there are several).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointTable {
    pub pretrained: bool,
    pub rows: Vec<(i64, [Option<f64>; 7])>,
    pub best: [Option<usize>; 7],
}

/// The metric names of a checkpoint evaluation, pretrained extractor then random, in the columns' order.
const CHECKPOINT_METRICS: [(&str, &str); 7] = [
    ("fid", "fd_random"),
    ("sfid", "sfd_random"),
    ("is", "score_random"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("density", "density"),
    ("coverage", "coverage"),
];

/// The checkpoint table of a run's metrics, or None when it measured no checkpoint.
pub fn checkpoint_table(series: &[MetricSeries]) -> Option<CheckpointTable> {
    let find = |name: &str| series.iter().find(|s| s.name == name);
    let pretrained = find("fid").is_some();
    if !pretrained && find("fd_random").is_none() {
        return None;
    }
    let columns: Vec<Option<&MetricSeries>> =
        CHECKPOINT_METRICS.iter().map(|(p, r)| find(if pretrained { p } else { r })).collect();
    let steps: std::collections::BTreeSet<i64> =
        columns.iter().flatten().flat_map(|s| s.steps.iter().copied()).collect();
    let rows: Vec<(i64, [Option<f64>; 7])> = steps
        .into_iter()
        .map(|step| {
            let values = std::array::from_fn(|c| {
                let s = columns[c]?;
                s.steps.iter().position(|&x| x == step).map(|i| s.values[i])
            });
            (step, values)
        })
        .collect();
    // One checkpoint is no contest: nothing is marked.
    let best = std::array::from_fn(|c| {
        if rows.len() < 2 {
            return None;
        }
        let lower = crate::pages::runs::lower_is_better(CHECKPOINT_METRICS[c].0);
        let mut best: Option<(usize, f64)> = None;
        for (r, (_, values)) in rows.iter().enumerate() {
            if let Some(v) = values[c].filter(|v| v.is_finite())
                && best.is_none_or(|(_, b)| if lower { v < b } else { v > b })
            {
                best = Some((r, v));
            }
        }
        best.map(|(r, _)| r)
    });
    Some(CheckpointTable { pretrained, rows, best })
}

/// A training run's checkpoint evaluations: a row per measured step, the best of each column marked.
#[component]
fn CheckpointMetrics(table: CheckpointTable) -> impl IntoView {
    let columns = evaluation_columns(table.pretrained);
    let best = table.best;
    view! {
        <h3>"Generation metrics per checkpoint (EMA weights; the best of each column marked)"</h3>
        <table class="metrics" id="checkpoint-metrics">
            <thead><tr><th class="num">"Step"</th>
                {columns.iter().map(|c| view! { <th class="num">{*c}</th> }).collect_view()}</tr></thead>
            <tbody>{table.rows.into_iter().enumerate().map(|(r, (step, values))| view! {
                <tr><td class="num">{step}</td>
                    {values.iter().enumerate().map(|(c, v)| {
                        let is_best = best[c] == Some(r);
                        view! { <td class=if is_best { "num best" } else { "num" }>
                            {v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())}{is_best.then_some(" ★")}</td> }
                    }).collect_view()}</tr>
            }).collect_view()}</tbody>
        </table>
    }
}

/// An evaluate run: Table 5 (a row per model) and the feature histograms of Figs. 7/9.
#[component]
fn EvaluateResult(job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    let report = move || {
        job.with(|j| {
            let j = j.as_ref()?.as_ref().ok()?;
            (j.kind == "evaluate")
                .then(|| serde_json::from_value::<repdiff_api::EvaluateReport>(j.result.clone()?).ok())?
        })
    };
    move || {
        report().map(|r| {
            let columns = evaluation_columns(r.pretrained);
            let note = if r.pretrained {
                "pytorch-fid's Inception-v3: the field's FID, sFID and IS.".to_string()
            } else {
                format!(
                    "No pretrained Inception weights on the server: distances are in the feature space of {} (comparable between these runs, not with published FIDs).",
                    r.extractor
                )
            };
            let series: Vec<Series> = r
                .histogram
                .iter()
                .flat_map(|h| {
                    h.sets.iter().map(move |s| {
                        let total = s.counts.iter().sum::<u32>().max(1) as f64;
                        Series {
                            name: if s.name == "real" { s.name.clone() } else { format!("{} (overlap {:.2})", s.name, s.overlap) },
                            xs: h.centres.clone(),
                            ys: s.counts.iter().map(|&c| c as f64 / total).collect(),
                        }
                    })
                })
                .collect();
            view! {
                <section class="card" id="evaluation">
                    <h2>{format!("Generation metrics against {} real images", r.real)}</h2>
                    <p class="muted small">{note}</p>
                    <table class="metrics">
                        <thead><tr><th>"Model"</th><th class="num">"Samples"</th>
                            {columns.iter().map(|c| view! { <th class="num">{*c}</th> }).collect_view()}</tr></thead>
                        <tbody>{r.results.iter().map(|m| {
                            let values = [m.fid, m.sfid, m.inception_score, m.precision, m.recall, m.density, m.coverage];
                            view! { <tr><td>{m.name.clone()}</td><td class="num">{m.generated}</td>
                                {values.iter().map(|v| view! { <td class="num">{format!("{v:.3}")}</td> }).collect_view()}</tr> }
                        }).collect_view()}</tbody>
                    </table>
                    {(!series.is_empty()).then(|| view! {
                        <h3>"Feature histograms (1-D t-SNE of pool features, share of each set per bin)"</h3>
                        {let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
                        view! { <LineChart series=Signal::stored(series) x_label="t-SNE position" />{crate::chart::legend(&names)} }}
                    })}
                </section>
            }
        })
    }
}

#[component]
fn Outputs(id: i64, refresh: RwSignal<u32>, job: RwSignal<Option<Result<Job, ApiError>>>) -> impl IntoView {
    let artifacts = LocalResource::new(move || {
        refresh.track();
        async move { api::get::<Vec<Artifact>>(&format!("/jobs/{id}/artifacts")).await }
    });
    let navigate = use_navigate();
    let kind =
        move || job.with(|j| j.as_ref().and_then(|j| j.as_ref().ok()).map(|j| j.kind.clone())).unwrap_or_default();
    view! {
        {move || loaded(artifacts.get(), {
            let navigate = navigate.clone();
            move |list: Vec<Artifact>| {
                if list.is_empty() {
                    return ().into_any();
                }
                let images: Vec<Artifact> = list.iter().filter(|a| a.kind == "sample_image").cloned().collect();
                let grid = list.iter().find(|a| a.kind == "grid").cloned();
                let trajectory = list.iter().find(|a| a.kind == "trajectory").cloned();
                let title = if kind() == "counterfactual" {
                    "Counterfactuals: original | class 0 | class 1 | difference (red: brighter under class 1)"
                } else {
                    "Samples"
                };
                // A pipeline's report is its result's tables, and a JSON report is the result itself: both
                // are shown above.
                let reports: Vec<Artifact> = list
                    .iter()
                    .filter(|a| a.kind == "report" && kind() != "reproduce" && a.media_type != "application/json")
                    .cloned()
                    .collect();
                // Figures with a title; untitled ones are the rows of the grid above (a counterfactual run
                // keeps each row too, for the gallery).
                let figures: Vec<Artifact> =
                    list.iter().filter(|a| a.kind == "figure" && a.meta.get("title").is_some()).cloned().collect();
                let gallery = if kind() == "sample" { format!("/gallery?job={id}") } else { format!("/gallery?from_job={id}") };
                let navigate = navigate.clone();
                view! {
                    {(!images.is_empty() || grid.is_some()).then(|| view! {
                        <section class="card" id="samples">
                            <div class="titlebar"><h2>{title}</h2><span class="spacer"></span>
                                {(!images.is_empty()).then(|| view! {
                                    <button class="link" on:click=move |_| navigate(&gallery, Default::default())>"Open in the gallery"</button>
                                })}</div>
                            {grid.map(|g| view! { <img class="grid-image" alt="sample grid" src=g.url.clone() /> })}
                            <div class="thumbs">
                                {images.into_iter().take(32).map(|a| {
                                    let class = a.meta.get("class").and_then(|c| c.as_i64());
                                    view! { <a class="thumb" href=a.url.clone() target="_blank"><img alt="sample" src=a.url.clone() loading="lazy" />
                                        {class.map(|c| view! { <span class="tag">{format!("class {c}")}</span> })}</a> }
                                }).collect_view()}
                            </div>
                        </section>
                    })}
                    {trajectory.map(|t| {
                        let steps = t.meta.get("timesteps").map(|v| v.to_string()).unwrap_or_default();
                        view! {
                            <section class="card" id="trajectory">
                                <h2>"Trajectories: x0 predictions, noisiest first"</h2>
                                <p class="muted small">{format!("A row per sample, at t = {steps}")}</p>
                                <img class="grid-image" alt="trajectories" src=t.url.clone() />
                            </section>
                        }
                    })}
                    {figures.into_iter().map(|f| {
                        let title = f.meta.get("title").and_then(|t| t.as_str()).unwrap_or("Figure").to_string();
                        view! {
                            <section class="card figure">
                                <h2>{title.clone()}</h2>
                                <a href=f.url.clone() target="_blank"><img class="grid-image" alt=title src=f.url.clone() /></a>
                            </section>
                        }
                    }).collect_view()}
                    {reports.into_iter().map(|a| view! { <Report artifact=a /> }).collect_view()}
                    <section class="card">
                        <h2>"Artifacts"</h2>
                        <table class="grid">
                            <thead><tr><th>"Kind"</th><th>"File"</th><th>"Size"</th><th>"Updated"</th></tr></thead>
                            <tbody>
                                {list.into_iter().filter(|a| a.kind != "sample_image").map(|a| view! {
                                    <tr><td>{a.kind.clone()}</td>
                                        <td><a href=a.url.clone() download>{a.key.rsplit('/').next().unwrap_or("").to_string()}</a></td>
                                        <td class="num">{bytes(a.size as f64)}</td><td>{ago(a.updated_at)}</td></tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    </section>
                }.into_any()
            }
        })}
    }
}

/// A text report of the run (a fine-tune's transfer table), shown as it is.
#[component]
fn Report(artifact: Artifact) -> impl IntoView {
    let url = artifact.url.clone();
    let text = LocalResource::new(move || {
        let url = url.clone();
        async move { api::get_text(&url).await }
    });
    let name = artifact.key.rsplit('/').next().unwrap_or("report").to_string();
    view! {
        <section class="card report">
            <h2>{if name == "transfer.txt" { "Weight transfer".to_string() } else { name }}</h2>
            {move || loaded(text.get(), |t: String| view! { <pre class="json">{t}</pre> })}
        </section>
    }
}

#[component]
fn Logs(id: i64, refresh: RwSignal<u32>) -> impl IntoView {
    let lines = RwSignal::new(Vec::<LogLine>::new());
    let error = RwSignal::new(None::<ApiError>);
    // One request at a time; a refresh that arrives meanwhile runs when it returns (so the lines logged
    // at the job's end are never missed).
    let busy = StoredValue::new(false);
    let again = StoredValue::new(false);
    fn tail(
        id: i64,
        lines: RwSignal<Vec<LogLine>>,
        error: RwSignal<Option<ApiError>>,
        busy: StoredValue<bool>,
        again: StoredValue<bool>,
    ) {
        if busy.get_value() {
            again.set_value(true);
            return;
        }
        busy.set_value(true);
        let after = lines.with_untracked(|l| l.last().map(|l| l.id)).map(|a| format!("?after={a}")).unwrap_or_default();
        spawn_local(async move {
            match api::get::<Vec<LogLine>>(&format!("/jobs/{id}/logs{after}")).await {
                Ok(more) => lines.update(|l| l.extend(more)),
                Err(e) => error.set(Some(e)),
            }
            busy.set_value(false);
            if again.get_value() {
                again.set_value(false);
                tail(id, lines, error, busy, again);
            }
        });
    }
    Effect::new(move |_| {
        refresh.track();
        tail(id, lines, error, busy, again);
    });
    view! {
        <section class="card" id="logs">
            <h2>"Log"</h2>
            <ErrorBox error=error />
            {move || lines.with(Vec::is_empty).then(|| view! { <p class="empty">"Nothing logged yet."</p> })}
            <pre class="log">
                <For each=move || lines.get() key=|l| l.id let(l)>
                    <div class=format!("log-{}", l.level)>{format!("{} {:5} {}", l.at.format("%H:%M:%S"), l.level, l.message)}</div>
                </For>
            </pre>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, steps: &[i64], values: &[f64]) -> MetricSeries {
        MetricSeries { name: name.into(), steps: steps.to_vec(), values: values.to_vec() }
    }

    #[test]
    fn a_run_without_checkpoint_evaluations_has_no_table() {
        assert_eq!(checkpoint_table(&[series("loss", &[1, 2], &[1.0, 0.5]), series("precision", &[1], &[0.3])]), None);
    }

    #[test]
    fn the_checkpoint_table_has_a_row_per_step_and_marks_the_best_of_each_column() {
        let m = [
            series("loss", &[1, 2, 3, 4], &[1.0, 0.8, 0.6, 0.5]),
            series("fd_random", &[2, 4], &[30.0, 12.0]),
            series("sfd_random", &[2, 4], &[5.0, 7.0]),
            series("score_random", &[2, 4], &[1.1, 1.4]),
            series("precision", &[2, 4], &[0.2, 0.6]),
            series("recall", &[2, 4], &[0.5, 0.4]),
            series("density", &[2], &[0.1]),
            series("coverage", &[2, 4], &[0.3, 0.3]),
        ];
        let t = checkpoint_table(&m).unwrap();
        assert!(!t.pretrained);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0], (2, [Some(30.0), Some(5.0), Some(1.1), Some(0.2), Some(0.5), Some(0.1), Some(0.3)]));
        assert_eq!(t.rows[1], (4, [Some(12.0), Some(7.0), Some(1.4), Some(0.6), Some(0.4), None, Some(0.3)]));
        // Distances: lowest; the rest: highest; ties keep the earlier checkpoint.
        assert_eq!(t.best, [Some(1), Some(0), Some(1), Some(1), Some(0), Some(0), Some(0)]);
    }

    #[test]
    fn the_pretrained_names_win_when_both_are_present() {
        let m = [series("fid", &[5], &[40.0]), series("fd_random", &[5], &[3.0])];
        let t = checkpoint_table(&m).unwrap();
        assert!(t.pretrained);
        assert_eq!(t.rows[0].1[0], Some(40.0));
        assert_eq!(t.best, [None; 7], "a single checkpoint marks nothing");
    }
}
