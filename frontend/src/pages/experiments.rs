use leptos::prelude::*;
use leptos::task::spawn_local;
use repdiff_api::{Experiment, NewExperiment, ResourcePatch};

use crate::api::{self, ApiError};
use crate::session::Session;
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
    let shared = RwSignal::new(false);
    let error = RwSignal::new(None::<ApiError>);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = NewExperiment {
            name: name.get_untracked(),
            description: description.get_untracked(),
            shared: shared.get_untracked(),
        };
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
        <p class="muted">"An experiment groups runs. It is private until shared; shared, it shows its runs, charts and samples to the whole team, except runs made from a private dataset (unless their owner published them). Its owner and members run jobs in it."</p>
        <section class="card">
            <form class="inline" on:submit=create>
                <input name="name" placeholder="Name" required prop:value=name on:input=move |ev| name.set(event_target_value(&ev)) />
                <input name="description" placeholder="Description" prop:value=description on:input=move |ev| description.set(event_target_value(&ev)) />
                <label class="check"><input type="checkbox" prop:checked=shared on:change=move |ev| shared.set(event_target_checked(&ev)) />"Share with the team"</label>
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
                    <thead><tr><th>"Name"</th><th>"Owner"</th><th>"Members"</th><th>"Visibility"</th><th>"Created"</th><th></th></tr></thead>
                    <tbody>
                        {items.into_iter().map(|e| {
                            let mine = e.owner == me;
                            let flip = e.clone();
                            view! {
                                <tr>
                                    <td><a href=format!("/runs?experiment={}", e.id)>{e.name.clone()}</a><div class="muted small">{e.description.clone()}</div></td>
                                    <td>{e.owner.clone()}</td>
                                    <td>{if e.members.is_empty() { "-".to_string() } else { e.members.join(", ") }}
                                        {mine.then(|| view! { <AddMember experiment=e.id reload=reload error=error /> })}</td>
                                    <td>{if e.shared { "team" } else { "owner and members" }}</td>
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

/// A username field that makes the user a member of the experiment (who then runs jobs in it).
#[component]
fn AddMember(experiment: i64, reload: RwSignal<u32>, error: RwSignal<Option<ApiError>>) -> impl IntoView {
    let username = RwSignal::new(String::new());
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let name = username.get_untracked();
        if name.trim().is_empty() {
            return;
        }
        spawn_local(async move {
            let path = format!("/experiments/{experiment}/members/{}", api::enc(name.trim()));
            match api::put::<_, Experiment>(&path, &serde_json::json!({})).await {
                Ok(_) => {
                    username.set(String::new());
                    reload.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <form class="inline small" on:submit=add>
            <input name="member" placeholder="add member" prop:value=username on:input=move |ev| username.set(event_target_value(&ev)) />
        </form>
    }
}
