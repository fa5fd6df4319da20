use leptos::prelude::*;
use leptos::task::spawn_local;
use repdiff_api::{Experiment, NewExperiment, ResourcePatch};

use crate::Session;
use crate::api::{self, ApiError};
use crate::util::{ErrorBox, ago, loaded};

#[component]
pub fn Experiments() -> impl IntoView {
    let reload = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        reload.track();
        api::get::<Vec<Experiment>>("/experiments")
    });
    let session = expect_context::<Session>();
    let name = RwSignal::new(String::new());
    let description = RwSignal::new(String::new());
    let error = RwSignal::new(None::<ApiError>);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = NewExperiment { name: name.get_untracked(), description: description.get_untracked(), shared: true };
        if let Err(message) = repdiff_api::check_name("experiment", &body.name) {
            error.set(Some(ApiError { status: 400, code: "invalid_request".into(), message }));
            return;
        }
        spawn_local(async move {
            match api::post::<_, Experiment>("/experiments", &body).await {
                Ok(_) => {
                    name.set(String::new());
                    description.set(String::new());
                    error.set(None);
                    reload.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let toggle_share = move |e: Experiment| {
        spawn_local(async move {
            let patch = ResourcePatch { shared: Some(!e.shared), ..Default::default() };
            match api::patch::<_, Experiment>(&format!("/experiments/{}", e.id), &patch).await {
                Ok(_) => reload.update(|n| *n += 1),
                Err(err) => error.set(Some(err)),
            }
        });
    };
    view! {
        <h1>"Experiments"</h1>
        <p class="muted">"An experiment groups runs; sharing it shows its runs, charts and samples to the whole team."</p>
        <section class="card">
            <form class="inline" on:submit=create>
                <input name="name" placeholder="Name" required prop:value=name on:input=move |ev| name.set(event_target_value(&ev)) />
                <input name="description" placeholder="Description" prop:value=description on:input=move |ev| description.set(event_target_value(&ev)) />
                <button type="submit">"Create experiment"</button>
            </form>
            <ErrorBox error=error />
        </section>
        {move || loaded(list.get(), move |items: Vec<Experiment>| {
            if items.is_empty() {
                return view! { <p class="empty">"No experiments yet."</p> }.into_any();
            }
            let me = session.me.get_untracked().map(|u| u.username).unwrap_or_default();
            view! {
                <table class="grid">
                    <thead><tr><th>"Name"</th><th>"Owner"</th><th>"Visibility"</th><th>"Created"</th><th></th></tr></thead>
                    <tbody>
                        {items.into_iter().map(|e| {
                            let mine = e.owner == me;
                            let flip = e.clone();
                            view! {
                                <tr>
                                    <td><a href=format!("/runs?experiment={}", e.id)>{e.name.clone()}</a><div class="muted small">{e.description.clone()}</div></td>
                                    <td>{e.owner.clone()}</td>
                                    <td>{if e.shared { "team" } else { "owner only" }}</td>
                                    <td>{ago(e.created_at)}</td>
                                    <td>{mine.then(|| view! {
                                        <button class="link" on:click=move |_| toggle_share(flip.clone())>{if e.shared { "Make private" } else { "Share" }}</button>
                                    })}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any()
        })}
    }
}
