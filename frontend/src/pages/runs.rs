//! The runs table: every job as a row with its configuration flattened into columns and its metrics
//! summarised (last and best), filtered, sorted, and reduced to the columns that differ. Filters and
//! sort live in the URL.

use std::collections::{BTreeMap, BTreeSet};

use leptos::prelude::*;
use leptos_router::hooks::{query_signal, use_navigate};
use repdiff_api::{Experiment, JobState, Run, RunPage};
use serde_json::Value;

use crate::api;
use crate::chart::format_value;
use crate::util::{ago, duration, loaded, state_badge};

/// The leaves of a job's parameters as `a.b.c -> value` (arrays as JSON text).
pub fn flatten(value: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            Value::Null => {}
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Whether smaller is better for a metric (losses, distances) or larger (accuracy, IS, precision...).
pub fn lower_is_better(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !["acc", "accuracy", "f1", "precision", "recall", "is", "inception_score", "density", "coverage", "auc", "score"]
        .iter()
        .any(|k| n == *k || n.starts_with(&format!("{k}_")) || n.ends_with(&format!("_{k}")))
}

#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Num(f64),
    Text(String),
}

impl Cell {
    fn cmp(&self, other: &Cell) -> std::cmp::Ordering {
        match (self, other) {
            (Cell::Num(a), Cell::Num(b)) => a.total_cmp(b),
            (Cell::Num(_), Cell::Text(_)) => std::cmp::Ordering::Less,
            (Cell::Text(_), Cell::Num(_)) => std::cmp::Ordering::Greater,
            (Cell::Text(a), Cell::Text(b)) => a.cmp(b),
        }
    }
    fn show(&self) -> String {
        match self {
            Cell::Num(v) => format_value(*v),
            Cell::Text(s) => s.clone(),
        }
    }
}

fn cell_of(text: &str) -> Cell {
    text.parse::<f64>().map(Cell::Num).unwrap_or_else(|_| Cell::Text(text.to_string()))
}

#[component]
pub fn Runs() -> impl IntoView {
    let (kind, set_kind) = query_signal::<String>("kind");
    let (state, set_state) = query_signal::<String>("state");
    let (experiment, set_experiment) = query_signal::<i64>("experiment");
    let (tag, set_tag) = query_signal::<String>("tag");
    let (text, set_text) = query_signal::<String>("q");
    let (sort, set_sort) = query_signal::<String>("sort");
    let (desc, set_desc) = query_signal::<bool>("desc");
    let (diff, set_diff) = query_signal::<bool>("diff");
    let selected = RwSignal::new(BTreeSet::<i64>::new());
    let tick = RwSignal::new(0u32);
    let runs = LocalResource::new(move || {
        tick.track();
        let mut q = vec!["limit=200".to_string()];
        if let Some(k) = kind.get().filter(|k| !k.is_empty()) {
            q.push(format!("kind={}", api::enc(&k)));
        }
        if let Some(s) = state.get().filter(|s| !s.is_empty()) {
            q.push(format!("state={}", api::enc(&s)));
        }
        if let Some(e) = experiment.get() {
            q.push(format!("experiment_id={e}"));
        }
        if let Some(t) = tag.get().filter(|t| !t.is_empty()) {
            q.push(format!("tag={}", api::enc(&t)));
        }
        let url = format!("/runs?{}", q.join("&"));
        async move { api::get::<RunPage>(&url).await }
    });
    // Live table: refresh while something is queued or running.
    let active =
        move || runs.get().and_then(|r| r.ok()).is_some_and(|p| p.runs.iter().any(|r| !r.job.state.is_final()));
    let timer = StoredValue::new_local(None::<leptos::leptos_dom::helpers::IntervalHandle>);
    Effect::new(move |_| {
        let on = active();
        if let Some(h) = timer.get_value() {
            h.clear();
        }
        timer.set_value(
            on.then(|| {
                set_interval_with_handle(move || tick.update(|n| *n += 1), std::time::Duration::from_secs(3)).ok()
            })
            .flatten(),
        );
    });
    on_cleanup(move || {
        if let Some(h) = timer.get_value() {
            h.clear();
        }
    });
    let kinds = LocalResource::new(|| api::get::<Vec<repdiff_api::JobKind>>("/job-kinds"));
    let experiments = LocalResource::new(|| api::get::<Vec<Experiment>>("/experiments"));
    let navigate = use_navigate();
    let compare = move |_| {
        let ids: Vec<String> = selected.get_untracked().iter().map(|i| i.to_string()).collect();
        navigate(&format!("/compare?runs={}", ids.join(",")), Default::default());
    };
    let header_click = move |key: String| {
        if sort.get_untracked().as_deref() == Some(key.as_str()) {
            set_desc.set(Some(!desc.get_untracked().unwrap_or(false)));
        } else {
            set_sort.set(Some(key));
            set_desc.set(None);
        }
    };

    view! {
        <div class="titlebar">
            <h1>"Runs"</h1>
            <a class="button" href="/runs/new">"New run"</a>
        </div>
        <div class="filters inline">
            <select name="kind" aria-label="Kind" on:change=move |ev| { let v = event_target_value(&ev); set_kind.set((!v.is_empty()).then_some(v)); }>
                <option value="" selected=move || kind.get().is_none()>"All kinds"</option>
                {move || kinds.get().and_then(|k| k.ok()).unwrap_or_default().into_iter().map(|k| {
                    let name = k.kind.clone();
                    view! { <option value=k.kind.clone() selected=move || kind.get().as_deref() == Some(name.as_str())>{k.kind.clone()}</option> }
                }).collect_view()}
            </select>
            <select name="state" aria-label="State" on:change=move |ev| { let v = event_target_value(&ev); set_state.set((!v.is_empty()).then_some(v)); }>
                <option value="" selected=move || state.get().is_none()>"All states"</option>
                {["queued", "running", "succeeded", "failed", "cancelled"].into_iter().map(|s| view! {
                    <option value=s selected=move || state.get().as_deref() == Some(s)>{s}</option>
                }).collect_view()}
            </select>
            <select name="experiment" aria-label="Experiment" on:change=move |ev| set_experiment.set(event_target_value(&ev).parse().ok())>
                <option value="" selected=move || experiment.get().is_none()>"All experiments"</option>
                {move || experiments.get().and_then(|e| e.ok()).unwrap_or_default().into_iter().map(|e| {
                    let id = e.id;
                    view! { <option value=e.id selected=move || experiment.get() == Some(id)>{e.name.clone()}</option> }
                }).collect_view()}
            </select>
            {move || tag.get().map(|t| view! {
                <span class="chip on">{format!("tag: {t}")}
                    <button class="link" aria-label="remove the tag filter" on:click=move |_| set_tag.set(None)>"×"</button></span>
            })}
            <input type="search" name="q" placeholder="Filter: text in any column" prop:value=move || text.get().unwrap_or_default()
                on:input=move |ev| { let v = event_target_value(&ev); set_text.set((!v.is_empty()).then_some(v)); } />
            // On by default: runs record every parameter (defaults included), most of them shared.
            <label class="check"><input type="checkbox" prop:checked=move || diff.get().unwrap_or(true)
                on:change=move |ev| set_diff.set((!event_target_checked(&ev)).then_some(false)) />"Only differing config"</label>
            <button on:click=compare disabled=move || selected.with(BTreeSet::is_empty)>
                {move || format!("Compare {} selected", selected.with(BTreeSet::len))}
            </button>
        </div>
        {move || loaded(runs.get(), move |page: RunPage| {
            let needle = text.get().unwrap_or_default().to_lowercase();
            view! {
                <RunsTable runs=page.runs needle=needle sort=sort.get() desc=desc.get().unwrap_or(false)
                    only_diff=diff.get().unwrap_or(true) selected=selected on_sort=header_click
                    on_tag=move |t| set_tag.set(Some(t)) />
            }
        })}
    }
}

#[component]
fn RunsTable(
    runs: Vec<Run>,
    needle: String,
    sort: Option<String>,
    desc: bool,
    only_diff: bool,
    selected: RwSignal<BTreeSet<i64>>,
    on_sort: impl Fn(String) + Copy + Send + Sync + 'static,
    on_tag: impl Fn(String) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    if runs.is_empty() {
        return view! { <p class="empty">"No runs match. Launch one with “New run”."</p> }.into_any();
    }
    let configs: Vec<BTreeMap<String, String>> = runs.iter().map(|r| flatten(&r.job.params)).collect();
    let mut config_keys: BTreeSet<String> = configs.iter().flat_map(|c| c.keys().cloned()).collect();
    // One run differs from none: it shows all it has.
    if only_diff && configs.len() > 1 {
        config_keys.retain(|k| {
            let first = configs[0].get(k);
            configs.iter().any(|c| c.get(k) != first)
        });
    }
    let metric_names: BTreeSet<String> = runs.iter().flat_map(|r| r.metrics.iter().map(|m| m.name.clone())).collect();
    // Columns: (key, header, value of a run).
    let mut columns: Vec<(String, String)> = config_keys.iter().map(|k| (format!("config:{k}"), k.clone())).collect();
    for m in &metric_names {
        let best = if lower_is_better(m) { "min" } else { "max" };
        columns.push((format!("last:{m}"), format!("{m} (last)")));
        columns.push((format!("best:{m}"), format!("{m} ({best})")));
    }
    let value = |run: &Run, config: &BTreeMap<String, String>, key: &str| -> Option<Cell> {
        let (what, name) = key.split_once(':')?;
        match what {
            "config" => config.get(name).map(|v| cell_of(v)),
            "last" => run.metrics.iter().find(|m| m.name == name).map(|m| Cell::Num(m.last)),
            "best" => run
                .metrics
                .iter()
                .find(|m| m.name == name)
                .map(|m| Cell::Num(if lower_is_better(name) { m.min } else { m.max })),
            _ => None,
        }
    };
    let mut rows: Vec<(Run, BTreeMap<String, String>)> = runs.into_iter().zip(configs).collect();
    if !needle.is_empty() {
        rows.retain(|(run, config)| {
            let hay = format!(
                "{} {} {} {} {} {}",
                run.job.id,
                run.job.kind,
                run.job.state.as_str(),
                run.job.owner.clone().unwrap_or_default(),
                run.job.tags.join(" "),
                config.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            )
            .to_lowercase();
            hay.contains(&needle)
        });
    }
    if let Some(key) = &sort {
        rows.sort_by(|a, b| {
            let (x, y) = match key.as_str() {
                "id" => (Some(Cell::Num(a.0.job.id as f64)), Some(Cell::Num(b.0.job.id as f64))),
                "kind" => (Some(Cell::Text(a.0.job.kind.clone())), Some(Cell::Text(b.0.job.kind.clone()))),
                "state" => {
                    (Some(Cell::Text(a.0.job.state.as_str().into())), Some(Cell::Text(b.0.job.state.as_str().into())))
                }
                k => (value(&a.0, &a.1, k), value(&b.0, &b.1, k)),
            };
            // Rows without the value go last whatever the direction.
            match (x, y) {
                (Some(x), Some(y)) => {
                    if desc {
                        y.cmp(&x)
                    } else {
                        x.cmp(&y)
                    }
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
        });
    }
    let arrow = move |key: &str| match &sort {
        Some(s) if s == key => {
            if desc {
                " ▼"
            } else {
                " ▲"
            }
        }
        _ => "",
    };
    let head = |key: &str, label: String| {
        let k = key.to_string();
        let a = arrow(key);
        view! { <th><button class="sort" on:click=move |_| on_sort(k.clone())>{label}{a}</button></th> }
    };
    view! {
        <div class="scroll">
            <table class="grid runs">
                <thead><tr>
                    <th></th>
                    {head("id", "Run".into())}
                    {head("kind", "Kind".into())}
                    {head("state", "State".into())}
                    <th>"Tags"</th><th>"Progress"</th><th>"Owner"</th><th>"Created"</th><th>"Took"</th>
                    {columns.iter().map(|(k, label)| head(k, label.clone())).collect_view()}
                </tr></thead>
                <tbody>
                    {rows.into_iter().map(|(run, config)| {
                        let job = &run.job;
                        let id = job.id;
                        let progress = job.progress.as_ref().map(|p| format!("{}/{}", p.step, p.total)).unwrap_or_default();
                        let took = match (job.started_at, job.finished_at) {
                            (Some(s), Some(f)) => duration((f - s).num_seconds()),
                            (Some(s), None) if job.state == JobState::Running => duration((chrono::Utc::now() - s).num_seconds()),
                            _ => String::new(),
                        };
                        let cells = columns.iter().map(|(k, _)| {
                            let v = value(&run, &config, k);
                            let class = if matches!(v, Some(Cell::Num(_))) { "num" } else { "" };
                            view! { <td class=class>{v.map(|v| v.show()).unwrap_or_default()}</td> }
                        }).collect_view();
                        view! {
                            <tr data-run=id>
                                <td><input type="checkbox" aria-label=format!("select run {id}") prop:checked=move || selected.with(|s| s.contains(&id))
                                    on:change=move |ev| { let on = event_target_checked(&ev); selected.update(|s| { if on { s.insert(id); } else { s.remove(&id); } }); } /></td>
                                <td><a href=format!("/runs/{id}")>{format!("#{id}")}</a></td>
                                <td>{job.kind.clone()}</td>
                                <td>{state_badge(job.state)}</td>
                                <td>{job.tags.iter().map(|t| {
                                    let t = t.clone();
                                    let label = t.clone();
                                    view! { <button class="tagchip" title="show runs with this tag" on:click=move |_| on_tag(t.clone())>{label}</button> }
                                }).collect_view()}</td>
                                <td class="num">{progress}</td>
                                <td>{job.owner.clone().unwrap_or_default()}</td>
                                <td>{ago(job.created_at)}</td>
                                <td>{took}</td>
                                {cells}
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_flatten_to_dotted_leaves() {
        let params = serde_json::json!({
            "run": { "preset": "tiny-cpu", "steps": 80, "config": null },
            "data": { "dataset": { "id": 3 } },
            "classes": [0, 1],
            "raw_weights": false,
        });
        let flat = flatten(&params);
        assert_eq!(flat["run.preset"], "tiny-cpu");
        assert_eq!(flat["run.steps"], "80");
        assert_eq!(flat["data.dataset.id"], "3");
        assert_eq!(flat["classes"], "[0,1]");
        assert_eq!(flat["raw_weights"], "false");
        assert!(!flat.contains_key("run.config"), "nulls are no value");
    }

    #[test]
    fn metric_direction() {
        for lower in ["loss", "mse", "vb", "fid", "sfid", "grad_norm", "fd_random", "sfd_random"] {
            assert!(lower_is_better(lower), "{lower}");
        }
        for higher in [
            "accuracy",
            "f1",
            "precision",
            "recall",
            "is",
            "test_f1",
            "f1_macro",
            "coverage",
            "score_random",
            "density",
        ] {
            assert!(!lower_is_better(higher), "{higher}");
        }
    }

    #[test]
    fn numbers_sort_as_numbers() {
        let (a, b) = (cell_of("9"), cell_of("10"));
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Less);
        assert_eq!(cell_of("ddim").cmp(&cell_of("ddpm")), std::cmp::Ordering::Less);
    }
}
