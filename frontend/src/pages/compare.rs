//! Comparing runs side by side: one metric's curves overlaid, and a table (the form of the paper's
//! Tables 5 and 6) of every metric's last and best value per run, the best run of each column marked,
//! with the configuration that differs between them; for classifier and probe runs, their test results
//! with bootstrap intervals (the paper's Table 6). `?runs=3,5,8&metric=loss`.

use std::collections::{BTreeMap, BTreeSet};

use leptos::prelude::*;
use leptos_router::hooks::query_signal;
use repdiff_api::{Job, MetricSeries};

use crate::api::{self, ApiError};
use crate::chart::{LineChart, Series, format_value};
use crate::pages::runs::{flatten, lower_is_better};
use crate::util::{loaded, state_badge};

/// Per run: a metric's last value, best value and the step of the best.
type Cells = Vec<Option<(f64, f64, i64)>>;

#[derive(Clone)]
struct Compared {
    job: Job,
    metrics: Vec<MetricSeries>,
}

#[component]
pub fn Compare() -> impl IntoView {
    let (runs_q, set_runs) = query_signal::<String>("runs");
    let (metric_q, set_metric) = query_signal::<String>("metric");
    let (smooth_q, set_smooth) = query_signal::<f64>("smooth");
    let smoothing = Signal::derive(move || smooth_q.get().unwrap_or(0.0).clamp(0.0, 0.99));
    let ids = Memo::new(move |_| {
        runs_q.get().unwrap_or_default().split(',').filter_map(|s| s.trim().parse::<i64>().ok()).collect::<Vec<_>>()
    });
    let data = LocalResource::new(move || {
        let ids = ids.get();
        async move {
            let mut out = Vec::new();
            for id in ids {
                let job = api::get::<Job>(&format!("/jobs/{id}")).await?;
                let metrics = api::get::<Vec<MetricSeries>>(&format!("/jobs/{id}/metrics")).await?;
                out.push(Compared { job, metrics });
            }
            Ok::<_, ApiError>(out)
        }
    });
    let add = RwSignal::new(String::new());
    view! {
        <h1>"Compare runs"</h1>
        <form class="inline" on:submit=move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let mut list = ids.get_untracked();
            list.extend(add.get_untracked().split(|c: char| c == ',' || c.is_whitespace()).filter_map(|s| s.trim_start_matches('#').parse::<i64>().ok()));
            list.dedup();
            set_runs.set(Some(list.iter().map(i64::to_string).collect::<Vec<_>>().join(",")));
            add.set(String::new());
        }>
            <input name="add" placeholder="Add runs by number: 12, 15" prop:value=add on:input=move |ev| add.set(event_target_value(&ev)) />
            <button type="submit">"Add"</button>
            <span class="muted">"or select rows in the runs table and press Compare."</span>
        </form>
        {move || {
            if ids.with(Vec::is_empty) {
                return view! { <p class="empty">"No runs chosen yet."</p> }.into_any();
            }
            loaded(data.get(), move |runs: Vec<Compared>| {
                let names: BTreeSet<String> = runs.iter().flat_map(|r| r.metrics.iter().map(|m| m.name.clone())).collect();
                let metric = metric_q.get().filter(|m| names.contains(m)).or_else(|| names.iter().find(|n| *n == "loss").or(names.first()).cloned());
                let overlay: Vec<Series> = runs.iter().filter_map(|r| {
                    let m = r.metrics.iter().find(|m| Some(&m.name) == metric.as_ref())?;
                    let mut s = Series::from_metric(m);
                    s.name = format!("#{}", r.job.id);
                    Some(s)
                }).collect();
                // The legend names the curves in the chart's colour order (runs without the metric have none).
                let legend: Vec<String> = overlay.iter().map(|s| s.name.clone()).collect();
                let configs: Vec<BTreeMap<String, String>> = runs.iter().map(|r| flatten(&r.job.params)).collect();
                let keys: Vec<String> = configs.iter().flat_map(|c| c.keys().cloned()).collect::<BTreeSet<_>>().into_iter()
                    .filter(|k| configs.iter().any(|c| c.get(k) != configs[0].get(k)))
                    .collect();
                // Per metric: each run's (last, best) and which run is best.
                let summary: Vec<(String, Cells, Option<usize>)> = names.iter().map(|name| {
                    let lower = lower_is_better(name);
                    let cells: Cells = runs.iter().map(|r| {
                        let m = r.metrics.iter().find(|m| &m.name == name)?;
                        let last = *m.values.last()?;
                        let (k, best) = m.values.iter().enumerate().filter(|(_, v)| v.is_finite())
                            .min_by(|a, b| if lower { a.1.total_cmp(b.1) } else { b.1.total_cmp(a.1) })?;
                        Some((last, *best, m.steps[k]))
                    }).collect();
                    let winner = cells.iter().enumerate().filter_map(|(i, c)| c.map(|c| (i, c.1)))
                        .min_by(|a, b| if lower { a.1.total_cmp(&b.1) } else { b.1.total_cmp(&a.1) }).map(|(i, _)| i);
                    (name.clone(), cells, if runs.len() > 1 { winner } else { None })
                }).collect();
                let remove = move |id: i64| {
                    let rest: Vec<String> = ids.get_untracked().into_iter().filter(|x| *x != id).map(|x| x.to_string()).collect();
                    set_runs.set((!rest.is_empty()).then(|| rest.join(",")));
                };
                view! {
                    {(!names.is_empty()).then(|| view! {
                        <section class="card">
                            <div class="titlebar">
                                <h2>"Curves"</h2><span class="spacer"></span>
                                <label>"Metric "
                                    <select name="metric" on:change=move |ev| set_metric.set(Some(event_target_value(&ev)))>
                                        {names.iter().map(|n| { let sel = Some(n) == metric.as_ref(); view! { <option value=n.clone() selected=sel>{n.clone()}</option> } }).collect_view()}
                                    </select>
                                </label>
                                <label>"Smoothing "
                                    <input type="range" min="0" max="0.99" step="0.01" prop:value=move || smoothing.get().to_string()
                                        on:input=move |ev| set_smooth.set(event_target_value(&ev).parse().ok()) />
                                </label>
                            </div>
                            <LineChart series=overlay smoothing=smoothing x_label="step" />
                            {crate::chart::legend(&legend)}
                        </section>
                    })}
                    {test_results(&runs)}
                    {generation_results(&runs)}
                    <div class="scroll">
                        <table class="grid compare">
                            <thead>
                                <tr><th>"Run"</th><th>"Kind"</th><th>"State"</th>
                                    {keys.iter().map(|k| view! { <th>{k.clone()}</th> }).collect_view()}
                                    {summary.iter().map(|(n, _, _)| view! { <th>{format!("{n} ({})", if lower_is_better(n) { "min" } else { "max" })}</th><th>{format!("{n} (last)")}</th> }).collect_view()}
                                    <th></th>
                                </tr>
                            </thead>
                            <tbody>
                                {runs.iter().enumerate().map(|(i, r)| {
                                    let id = r.job.id;
                                    view! {
                                        <tr>
                                            <td><a href=format!("/runs/{id}")>{format!("#{id}")}</a></td>
                                            <td>{r.job.kind.clone()}</td>
                                            <td>{state_badge(r.job.state)}</td>
                                            {keys.iter().map(|k| view! { <td>{configs[i].get(k).cloned().unwrap_or_default()}</td> }).collect_view()}
                                            {summary.iter().map(|(_, cells, winner)| {
                                                let best = *winner == Some(i);
                                                match cells[i] {
                                                    Some((last, b, step)) => view! {
                                                        <td class=if best { "num best" } else { "num" } title=format!("at step {step}")>{format_value(b)}{best.then_some(" ★")}</td>
                                                        <td class="num">{format_value(last)}</td>
                                                    }.into_any(),
                                                    None => view! { <td></td><td></td> }.into_any(),
                                                }
                                            }).collect_view()}
                                            <td><button class="link" on:click=move |_| remove(id)>"Remove"</button></td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                }.into_any()
            })
        }}
    }
}

/// One run's test result: (t, metrics, intervals, forward passes per image).
type TestRow = (Option<usize>, repdiff_api::ClassMetrics, Option<repdiff_api::Intervals>, Option<f64>);

/// The test result of a classify, probe or supervised run, when it has one.
fn test_row(job: &Job) -> Option<TestRow> {
    let result = job.result.clone()?;
    match job.kind.as_str() {
        "classify" => {
            let t = serde_json::from_value::<repdiff_api::ClassifyReport>(result).ok()?.test?;
            Some((Some(t.t), t.metrics, t.intervals, Some(t.forwards_per_image)))
        }
        "probe" => {
            let t = serde_json::from_value::<repdiff_api::ProbeReport>(result).ok()?.test?;
            Some((None, t.metrics, Some(t.intervals), None))
        }
        "supervised" => {
            let t = serde_json::from_value::<repdiff_api::SupervisedReport>(result).ok()?.test?;
            Some((None, t.metrics, Some(t.intervals), None))
        }
        _ => None,
    }
}

/// The compared runs' test results side by side (Table 6), each metric with its bootstrap interval and
/// the best run(s) of each column marked where the runs differ.
fn test_results(runs: &[Compared]) -> impl IntoView + use<> {
    let rows: Vec<(i64, String, i64, TestRow)> = runs
        .iter()
        .filter_map(|r| {
            let model = r.job.params.pointer("/checkpoint/job").and_then(serde_json::Value::as_i64).unwrap_or(0);
            Some((r.job.id, r.job.kind.clone(), model, test_row(&r.job)?))
        })
        .collect();
    if rows.is_empty() {
        return ().into_any();
    }
    let pick = |m: &repdiff_api::ClassMetrics, k: usize| [m.accuracy, m.precision, m.recall, m.f1][k];
    // Per metric column, the best value, when the runs differ in it (every run that reaches it is marked).
    let best: Vec<Option<f64>> = (0..4)
        .map(|k| {
            let values: Vec<f64> = rows.iter().map(|r| pick(&r.3.1, k)).collect();
            let top = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            values.iter().any(|&v| v != top).then_some(top)
        })
        .collect();
    let pct = |v: f64| format!("{:.1}", v * 100.0);
    view! {
        <section class="card" id="test-results">
            <h2>"Test results (95% bootstrap intervals)"</h2>
            <table class="grid test-results">
                <thead><tr><th>"Run"</th><th>"Kind"</th><th>"Model"</th><th>"t"</th><th>"accuracy %"</th><th>"precision %"</th>
                    <th>"recall %"</th><th>"F1 %"</th><th>"forwards/image"</th></tr></thead>
                <tbody>
                    {rows.into_iter().map(|(id, kind, model, (t, m, intervals, forwards))| {
                        let cells = (0..4).map(|k| {
                            let range = intervals.as_ref().map(|iv| [iv.accuracy, iv.precision, iv.recall, iv.f1][k]);
                            let text = match range {
                                Some([lo, hi]) => format!("{} [{}, {}]", pct(pick(&m, k)), pct(lo), pct(hi)),
                                None => pct(pick(&m, k)),
                            };
                            let is_best = best[k] == Some(pick(&m, k));
                            view! { <td class=if is_best { "num best" } else { "num" }>{text}{is_best.then_some(" ★")}</td> }
                        }).collect_view();
                        view! {
                            <tr>
                                <td><a href=format!("/runs/{id}")>{format!("#{id}")}</a></td><td>{kind}</td>
                                <td><a href=format!("/runs/{model}")>{format!("#{model}")}</a></td>
                                <td class="num">{t.map(|t| t.to_string()).unwrap_or_default()}</td>
                                {cells}
                                <td class="num">{forwards.map(|f| format!("{f:.1}")).unwrap_or_default()}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
    .into_any()
}

/// The compared evaluate runs' generation metrics side by side (Table 5): a row per evaluated model, the
/// best value of each column starred (lowest distance; highest score, precision, recall, coverage).
/// Runs whose extractors differ are not comparable; the extractor is shown per row.
fn generation_results(runs: &[Compared]) -> impl IntoView + use<> {
    let rows: Vec<(i64, String, repdiff_api::EvaluatedSet)> = runs
        .iter()
        .filter(|r| r.job.kind == "evaluate")
        .filter_map(|r| {
            serde_json::from_value::<repdiff_api::EvaluateReport>(r.job.result.clone()?).ok().map(|e| (r.job.id, e))
        })
        .flat_map(|(id, e)| e.results.into_iter().map(move |m| (id, e.extractor.clone(), m)))
        .collect();
    if rows.is_empty() {
        return ().into_any();
    }
    let pick = |m: &repdiff_api::EvaluatedSet| {
        [m.fid, m.sfid, m.inception_score, m.precision, m.recall, m.density, m.coverage]
    };
    // Lower is better for the two distances, higher for the rest but density (best near 1: unmarked).
    let best: Vec<Option<f64>> = (0..7)
        .map(|k| {
            let values: Vec<f64> = rows.iter().map(|r| pick(&r.2)[k]).collect();
            let top = match k {
                0 | 1 => values.iter().cloned().fold(f64::INFINITY, f64::min),
                5 => return None,
                _ => values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            };
            values.iter().any(|&v| v != top).then_some(top)
        })
        .collect();
    let pretrained = rows.iter().all(|r| r.1 == "inception-v3");
    let columns = crate::pages::run::evaluation_columns(pretrained);
    view! {
        <section class="card" id="generation-results">
            <h2>"Generation metrics"</h2>
            <table class="grid generation-results">
                <thead><tr><th>"Run"</th><th>"Model"</th><th>"Extractor"</th>
                    {columns.iter().map(|c| view! { <th class="num">{*c}</th> }).collect_view()}</tr></thead>
                <tbody>
                    {rows.into_iter().map(|(id, extractor, m)| {
                        let cells = pick(&m).into_iter().enumerate().map(|(k, v)| {
                            let is_best = best[k] == Some(v);
                            view! { <td class=if is_best { "num best" } else { "num" }>{format!("{v:.3}")}{is_best.then_some(" ★")}</td> }
                        }).collect_view();
                        view! {
                            <tr><td><a href=format!("/runs/{id}")>{format!("#{id}")}</a></td><td>{m.name.clone()}</td>
                                <td>{extractor}</td>{cells}</tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
    .into_any()
}
