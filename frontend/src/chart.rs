//! SVG charts drawn by Leptos: line charts with a smoothing slider and the raw curve faded behind
//! (the paper's Fig. 6), an optional marked x (the chosen timestep of Fig. 12), hover read-outs.
//!
//! The SVG carries its domain and plot box as data attributes (`data-x-min`, ..., `data-plot`) so a test
//! can map the drawn points back to numbers and compare them with the API's.

use leptos::prelude::*;
use wasm_bindgen::JsCast;

pub const WIDTH: f64 = 640.0;
pub const HEIGHT: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;

/// One named curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
}

impl Series {
    pub fn from_metric(m: &repdiff_api::MetricSeries) -> Self {
        Series { name: m.name.clone(), xs: m.steps.iter().map(|&s| s as f64).collect(), ys: m.values.clone() }
    }
}

/// TensorBoard's smoothing: an exponential moving average debiased for its start (so the first points are
/// not pulled towards zero). `weight` in [0, 1): 0 is the raw curve. Non-finite values pass through.
pub fn smooth(ys: &[f64], weight: f64) -> Vec<f64> {
    let weight = weight.clamp(0.0, 0.999);
    let mut last = 0.0;
    let mut n = 0;
    ys.iter()
        .map(|&y| {
            if !y.is_finite() {
                return y;
            }
            last = last * weight + (1.0 - weight) * y;
            n += 1;
            let debias = 1.0 - weight.powi(n);
            if debias > 0.0 { last / debias } else { y }
        })
        .collect()
}

/// Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of ten, about `count` of them,
/// and never finer than `min_step` (1 for an axis of steps: no tick between two whole steps).
pub fn ticks(lo: f64, hi: f64, count: usize, min_step: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    // The round step nearest the raw one (on a log scale), so the count stays close to `count`.
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .min_by(|a, b| (a / raw).ln().abs().total_cmp(&(b / raw).ln().abs()))
        .unwrap_or(magnitude)
        .max(min_step);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Labels of a row of ticks, all with the fewest decimals that write every tick exactly (0.25 is not
/// "0.2", and 100.2 beside 100.4 is not "100" twice); scientific notation for very large or small values.
pub fn tick_labels(ticks: &[f64]) -> Vec<String> {
    let largest = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scientific = !(largest == 0.0 || (1e-3..1e5).contains(&largest));
    let write = |v: f64, decimals: usize| match (v == 0.0, scientific) {
        (true, _) => "0".to_string(),
        (false, true) => format!("{v:.decimals$e}"),
        (false, false) => format!("{v:.decimals$}"),
    };
    let exact = |v: f64, label: &str| label.parse::<f64>().is_ok_and(|p| (p - v).abs() <= 1e-9 * v.abs().max(1e-300));
    (0..=8)
        .map(|decimals| ticks.iter().map(|&v| write(v, decimals)).collect::<Vec<_>>())
        .find(|labels| ticks.iter().zip(labels).all(|(&v, l)| exact(v, l)))
        .unwrap_or_else(|| ticks.iter().map(|&v| format_value(v)).collect())
}

/// An x in the hover read-out: short, without float noise.
pub fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The data range of every finite point, padded so curves do not touch the frame.
fn domain(series: &[Series]) -> Option<(f64, f64, f64, f64)> {
    let points = || series.iter().flat_map(|s| s.xs.iter().zip(&s.ys)).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (&x, &y) in points() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return None;
    }
    // A single x (one step logged, a test at one timestep) sits in the middle of the axis.
    if x1 == x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = if y1 > y0 { (y1 - y0) * 0.05 } else { y0.abs().max(1.0) * 0.05 };
    Some((x0, x1, y0 - pad, y1 + pad))
}

#[derive(Clone, Copy)]
struct Scale {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Scale {
    fn x(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, y: f64) -> f64 {
        TOP + (self.y1 - y) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)
    }
    fn invert_x(&self, px: f64) -> f64 {
        self.x0 + (px - LEFT) / (WIDTH - LEFT - RIGHT) * (self.x1 - self.x0)
    }
}

/// An SVG path through the finite points (a gap where a value is not finite).
fn path(scale: Scale, xs: &[f64], ys: &[f64]) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    for (&x, &y) in xs.iter().zip(ys) {
        if !(x.is_finite() && y.is_finite()) {
            pen_down = false;
            continue;
        }
        d.push_str(if pen_down { "L" } else { "M" });
        d.push_str(&format!("{:.2} {:.2}", scale.x(x), scale.y(y)));
        pen_down = true;
    }
    d
}

pub const COLORS: [&str; 6] = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];

/// A line chart of one or more series. `smoothing` (0 = off) draws the smoothed curve over the raw one,
/// which is faded; `marker` draws a vertical line at that x (with its label).
#[component]
pub fn LineChart(
    #[prop(into)] series: Signal<Vec<Series>>,
    #[prop(into, default = Signal::stored(0.0))] smoothing: Signal<f64>,
    #[prop(into)] x_label: String,
    #[prop(into, default = Signal::stored(None))] marker: Signal<Option<(f64, String)>>,
) -> impl IntoView {
    let hover = RwSignal::new(None::<f64>);
    let scale = Memo::new(move |_| series.with(|s| domain(s)));
    let on_move = move |ev: web_sys::MouseEvent| {
        let Some(target) = ev.current_target().and_then(|t| t.dyn_into::<web_sys::Element>().ok()) else { return };
        let rect = target.get_bounding_client_rect();
        if rect.width() <= 0.0 {
            return;
        }
        let px = (ev.client_x() as f64 - rect.left()) / rect.width() * WIDTH;
        if let Some((x0, x1, y0, y1)) = scale.get() {
            let s = Scale { x0, x1, y0, y1 };
            hover.set((LEFT..=WIDTH - RIGHT).contains(&px).then(|| s.invert_x(px)));
        }
    };
    move || {
        let Some((x0, x1, y0, y1)) = scale.get() else {
            return view! { <p class="empty">"No points yet."</p> }.into_any();
        };
        let s = Scale { x0, x1, y0, y1 };
        let weight = smoothing.get();
        let all = series.get();
        // Steps and timesteps are whole numbers: their axis has no tick between two of them.
        let whole_x = all.iter().all(|c| c.xs.iter().all(|x| x.fract() == 0.0));
        let x_ticks = ticks(x0, x1, 6, if whole_x { 1.0 } else { 0.0 });
        let y_ticks = ticks(y0, y1, 5, 0.0);
        let (x_labels, y_labels) = (tick_labels(&x_ticks), tick_labels(&y_ticks));
        let curves = all
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let color = COLORS[i % COLORS.len()];
                let raw = path(s, &c.xs, &c.ys);
                let smoothed = (weight > 0.0).then(|| path(s, &c.xs, &smooth(&c.ys, weight)));
                let raw_opacity = if smoothed.is_some() { "0.25" } else { "1" };
                // A lone point (a test result at one timestep) draws no line: mark it.
                let finite: Vec<(f64, f64)> =
                    c.xs.iter().zip(&c.ys).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(&x, &y)| (x, y)).collect();
                let lone = (finite.len() == 1).then(|| finite[0]);
                view! {
                    <g class="series" data-series=c.name.clone()>
                        {lone.map(|(x, y)| view! { <circle class="point" cx=format!("{:.2}", s.x(x)) cy=format!("{:.2}", s.y(y)) r="4" fill=color></circle> })}
                        <path class="raw" d=raw fill="none" stroke=color stroke-width="1.2" opacity=raw_opacity></path>
                        {smoothed.map(|d| view! { <path class="smoothed" d=d fill="none" stroke=color stroke-width="2"></path> })}
                    </g>
                }
            })
            .collect_view();
        let readout = hover.get().map(|x| {
            let rows = all
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let k = nearest(&c.xs, x)?;
                    let smoothed = (weight > 0.0).then(|| smooth(&c.ys, weight)[k]);
                    Some((i, c.name.clone(), c.xs[k], c.ys[k], smoothed))
                })
                .collect::<Vec<_>>();
            let at = rows.first().map(|r| r.2).unwrap_or(x);
            let px = s.x(at);
            view! {
                <line class="hover" x1=px x2=px y1=TOP y2=HEIGHT - BOTTOM stroke="#9ca3af" stroke-dasharray="3 3"></line>
                <text class="readout" x=LEFT + 6.0 y=TOP + 12.0 font-size="11">
                    {format!("{} {}", x_label, format_tick(at))}
                    {rows
                        .into_iter()
                        .map(|(i, name, _, y, smoothed)| {
                            let text = match smoothed {
                                Some(sm) => format!("  {name} {} (smoothed {})", format_value(y), format_value(sm)),
                                None => format!("  {name} {}", format_value(y)),
                            };
                            view! { <tspan fill=COLORS[i % COLORS.len()]>{text}</tspan> }
                        })
                        .collect_view()}
                </text>
            }
        });
        let marker_view = marker.get().filter(|(x, _)| *x >= x0 && *x <= x1).map(|(x, label)| {
            let px = s.x(x);
            view! {
                <line class="marker" x1=px x2=px y1=TOP y2=HEIGHT - BOTTOM stroke="#111827" stroke-width="1.5"></line>
                <text x=px + 4.0 y=HEIGHT - BOTTOM - 6.0 font-size="11">{label}</text>
            }
        });
        view! {
            <svg
                class="chart"
                viewBox=format!("0 0 {WIDTH} {HEIGHT}")
                role="img"
                data-x-min=x0
                data-x-max=x1
                data-y-min=y0
                data-y-max=y1
                data-plot=format!("{LEFT} {TOP} {} {}", WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM)
                on:mousemove=on_move
                on:mouseleave=move |_| hover.set(None)
            >
                <rect x=LEFT y=TOP width=WIDTH - LEFT - RIGHT height=HEIGHT - TOP - BOTTOM fill="#fff" stroke="#e5e7eb"></rect>
                {y_ticks
                    .into_iter()
                    .zip(y_labels)
                    .map(|(t, label)| {
                        let py = s.y(t);
                        view! {
                            <line x1=LEFT x2=WIDTH - RIGHT y1=py y2=py stroke="#f0f0f0"></line>
                            <text x=LEFT - 6.0 y=py + 4.0 text-anchor="end" font-size="11" fill="#4b5563">{label}</text>
                        }
                    })
                    .collect_view()}
                {x_ticks
                    .into_iter()
                    .zip(x_labels)
                    .map(|(t, label)| {
                        let px = s.x(t);
                        view! {
                            <line x1=px x2=px y1=HEIGHT - BOTTOM y2=HEIGHT - BOTTOM + 4.0 stroke="#9ca3af"></line>
                            <text x=px y=HEIGHT - BOTTOM + 16.0 text-anchor="middle" font-size="11" fill="#4b5563">{label}</text>
                        }
                    })
                    .collect_view()}
                <text x=WIDTH - RIGHT y=HEIGHT - 2.0 text-anchor="end" font-size="11" fill="#6b7280">{x_label.clone()}</text>
                {curves}
                {marker_view}
                {readout}
            </svg>
        }
        .into_any()
    }
}

/// The names of a chart's series beside their colours (the order of the series).
pub fn legend(names: &[String]) -> impl IntoView + use<> {
    view! {
        <p class="legend">
            {names.iter().enumerate().map(|(i, name)| view! {
                <span style=format!("color:{}", COLORS[i % COLORS.len()])>{format!("■ {name} ")}</span>
            }).collect_view()}
        </p>
    }
}

fn nearest(xs: &[f64], x: f64) -> Option<usize> {
    xs.iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .min_by(|a, b| (a.1 - x).abs().total_cmp(&(b.1 - x).abs()))
        .map(|(i, _)| i)
}

/// A metric value with about five significant digits.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.4e}")
    } else {
        format!("{v:.5}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_debiased_and_zero_is_identity() {
        let ys = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(smooth(&ys, 0.0), ys.to_vec());
        let s = smooth(&[5.0, 5.0, 5.0], 0.9);
        assert!(s.iter().all(|v| (v - 5.0).abs() < 1e-12), "a constant stays constant: {s:?}");
        let s = smooth(&ys, 0.5);
        // last = 0.5, debias 0.5 -> 1; last = 0.25 + 1 = 1.25, debias 0.75 -> 1.6667
        assert!((s[1] - 5.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 100.0, 5, 0.0), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        // Just over a round step does not halve the tick count.
        assert_eq!(ticks(0.0, 1.002, 5, 0.0).len(), 6);
        let t = ticks(0.013, 0.087, 4, 0.0);
        assert!(t.iter().all(|v| (0.013..=0.087).contains(v)) && t.len() >= 3, "{t:?}");
        assert_eq!(format_tick(0.30000000000000004), "0.3");
        assert_eq!(format_tick(2500.0), "2500");
    }

    #[test]
    fn tick_labels_write_every_tick_exactly_and_never_twice() {
        // One test result at timestep 100 (the axis the compare page drew as "100 100 100 101 101").
        let t = ticks(99.0, 101.0, 6, 1.0);
        assert_eq!(t, vec![99.0, 100.0, 101.0]);
        assert_eq!(tick_labels(&t), ["99", "100", "101"]);
        assert_eq!(tick_labels(&ticks(100.0, 101.0, 6, 0.0)), ["100.0", "100.2", "100.4", "100.6", "100.8", "101.0"]);
        assert_eq!(tick_labels(&[0.0, 0.25, 0.5, 0.75]), ["0", "0.25", "0.50", "0.75"]);
        assert_eq!(tick_labels(&[1750.0, 1800.0, 1850.0]), ["1750", "1800", "1850"]);
        assert_eq!(tick_labels(&[0.0, 2e5, 4e5]), ["0", "2e5", "4e5"]);
        assert_eq!(tick_labels(&[1e-4, 1.5e-4]), ["1.0e-4", "1.5e-4"]);
        for (lo, hi) in [(0.475, 0.525), (1834.0, 1834.5), (-3.0, 7.0), (1e-6, 3e-6), (0.0, 645_000.0)] {
            let t = ticks(lo, hi, 5, 0.0);
            let labels = tick_labels(&t);
            assert!(t.len() >= 2, "{lo}..{hi}: {t:?}");
            assert!(labels.windows(2).all(|w| w[0] != w[1]), "{lo}..{hi}: {labels:?}");
        }
    }

    #[test]
    fn a_lone_x_is_centred() {
        let lone = Series { name: "test_accuracy".into(), xs: vec![100.0], ys: vec![0.5] };
        let (x0, x1, y0, y1) = domain(&[lone]).unwrap();
        assert_eq!((x0, x1), (99.0, 101.0));
        assert!(y0 < 0.5 && y1 > 0.5);
    }

    #[test]
    fn paths_skip_non_finite_points() {
        let s = Scale { x0: 0.0, x1: 2.0, y0: 0.0, y1: 1.0 };
        let d = path(s, &[0.0, 1.0, 2.0], &[0.0, f64::NAN, 1.0]);
        assert_eq!(d.matches('M').count(), 2);
        assert!(!d.contains('L'));
    }
}
