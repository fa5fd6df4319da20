//! RepDiff in the browser: a Leptos client-side app over the REST API (`/api/v1`). Every view has its
//! own URL (filters, tabs and sliders live in the query string), so a team can share what it sees.

mod api;
mod chart;
mod pages;
mod session;
mod util;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::{A, Redirect, Route, Router, Routes};
use leptos_router::path;
use repdiff_api::User;
use session::Session;

fn main() {
    console_error_panic_hook::set_once();
    mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let lost = RwSignal::new(false);
    api::watch_session(lost);
    let me = RwSignal::new(None::<User>);
    let checked = RwSignal::new(false);
    provide_context(Session { me });
    spawn_local(async move {
        if let Ok(user) = api::get::<User>("/auth/me").await {
            me.set(Some(user));
        }
        lost.set(false);
        checked.set(true);
    });
    let signed_in = move || me.with(Option::is_some) && !lost.get();
    view! {
        <Router>
            {move || {
                if !checked.get() {
                    view! { <p class="loading">"Loading…"</p> }.into_any()
                } else if signed_in() {
                    view! { <Shell /> }.into_any()
                } else {
                    view! { <pages::login::Login on_signed_in=move |user| { me.set(Some(user)); lost.set(false); } /> }
                        .into_any()
                }
            }}
        </Router>
    }
}

#[component]
fn Shell() -> impl IntoView {
    let session = expect_context::<Session>();
    let sign_out = move |_| {
        spawn_local(async move {
            let _ = api::post_empty("/auth/logout").await;
            session.me.set(None);
        });
    };
    let name = move || session.me.get().map(|u| format!("{} ({})", u.username, u.role.as_str())).unwrap_or_default();
    view! {
        <header class="top">
            <a class="brand" href="/runs">"RepDiff"</a>
            <nav>
                <A href="/runs">"Runs"</A>
                <A href="/datasets">"Datasets"</A>
                <A href="/gallery">"Samples"</A>
                <A href="/compare">"Compare"</A>
                <A href="/experiments">"Experiments"</A>
            </nav>
            <span class="who">{name}</span>
            <button class="link" on:click=sign_out>"Sign out"</button>
        </header>
        <main>
            <Routes fallback=|| view! { <h1>"Not found"</h1><p>"No page at this address."</p> }>
                <Route path=path!("/") view=|| view! { <Redirect path="/runs" /> } />
                <Route path=path!("/runs") view=pages::runs::Runs />
                <Route path=path!("/runs/new") view=pages::launch::Launch />
                <Route path=path!("/runs/:id") view=pages::run::RunPage />
                <Route path=path!("/datasets") view=pages::datasets::Datasets />
                <Route path=path!("/datasets/:id") view=pages::dataset::DatasetPage />
                <Route path=path!("/gallery") view=pages::gallery::Gallery />
                <Route path=path!("/compare") view=pages::compare::Compare />
                <Route path=path!("/experiments") view=pages::experiments::Experiments />
            </Routes>
        </main>
    }
}
