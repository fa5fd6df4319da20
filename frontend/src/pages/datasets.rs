use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::use_navigate;
use repdiff_api::{Dataset, NewDataset};

use crate::api::{self, ApiError};
use crate::util::{ErrorBox, ago, loaded};

#[component]
pub fn Datasets() -> impl IntoView {
    let list = LocalResource::new(|| api::get::<Vec<Dataset>>("/datasets"));
    let name = RwSignal::new(String::new());
    let description = RwSignal::new(String::new());
    let shared = RwSignal::new(false);
    let keep_names = RwSignal::new(false);
    let error = RwSignal::new(None::<ApiError>);
    let navigate = use_navigate();
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = NewDataset {
            name: name.get_untracked(),
            description: description.get_untracked(),
            shared: shared.get_untracked(),
            keep_file_names: keep_names.get_untracked(),
        };
        if let Err(message) = repdiff_api::check_name("dataset", &body.name) {
            error.set(Some(ApiError { status: 400, code: "invalid_request".into(), message }));
            return;
        }
        let navigate = navigate.clone();
        spawn_local(async move {
            match api::post::<_, Dataset>("/datasets", &body).await {
                Ok(d) => navigate(&format!("/datasets/{}", d.id), Default::default()),
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <h1>"Datasets"</h1>
        <section class="card">
            <h2>"New dataset"</h2>
            <form class="inline" on:submit=create>
                <input name="name" placeholder="Name" required prop:value=name on:input=move |ev| name.set(event_target_value(&ev)) />
                <input name="description" placeholder="Description (optional)" prop:value=description
                    on:input=move |ev| description.set(event_target_value(&ev)) />
                <label class="check"><input type="checkbox" prop:checked=shared on:change=move |ev| shared.set(event_target_checked(&ev)) />"Share with the team"</label>
                <label class="check"><input type="checkbox" name="keep_file_names" prop:checked=keep_names on:change=move |ev| keep_names.set(event_target_checked(&ev)) />"Keep file names"</label>
                <button type="submit">"Create"</button>
            </form>
            <p class="muted small">"Scans are named with pseudonyms unless the dataset keeps file names: clinical exports are often named after the patient, so keep them only when they are already pseudonymous."</p>
            <Show when=move || keep_names.get()>
                <p class="warning small">"File names will be stored and shown to everyone who sees this dataset."</p>
            </Show>
            <ErrorBox error=error />
        </section>
        {move || loaded(list.get(), |sets: Vec<Dataset>| {
            if sets.is_empty() {
                return view! { <p class="empty">"No datasets yet: create one, then drop scans on it."</p> }.into_any();
            }
            view! {
                <table class="grid">
                    <thead><tr><th>"Name"</th><th>"Slices"</th><th>"Hematoma"</th><th>"Owner"</th><th>"Shared"</th><th>"Created"</th></tr></thead>
                    <tbody>
                        {sets.into_iter().map(|d| view! {
                            <tr>
                                <td><a href=format!("/datasets/{}", d.id)>{d.name.clone()}</a><div class="muted small">{d.description.clone()}</div></td>
                                <td class="num">{d.scans}</td>
                                <td class="num">{d.hematoma}</td>
                                <td>{d.owner.clone()}</td>
                                <td>{if d.shared { "team" } else { "owner only" }}</td>
                                <td>{ago(d.created_at)}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any()
        })}
    }
}
