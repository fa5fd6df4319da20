use leptos::prelude::*;
use leptos::task::spawn_local;
use repdiff_api::{Login as LoginBody, User};

use crate::api::{self, ApiError};
use crate::util::ErrorBox;

#[component]
pub fn Login(on_signed_in: impl Fn(User) + Clone + Send + Sync + 'static) -> impl IntoView {
    let username = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let error = RwSignal::new(None::<ApiError>);
    let busy = RwSignal::new(false);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = LoginBody { username: username.get_untracked(), password: password.get_untracked() };
        let done = on_signed_in.clone();
        busy.set(true);
        spawn_local(async move {
            match api::post::<_, User>("/auth/login", &body).await {
                Ok(user) => done(user),
                Err(e) => error.set(Some(e)),
            }
            busy.set(false);
        });
    };
    view! {
        <div class="signin">
            <form on:submit=submit>
                <h1>"RepDiff"</h1>
                <p class="muted">"Sign in to your team's workspace."</p>
                <label>"Username"
                    <input name="username" autocomplete="username" required autofocus
                        prop:value=username on:input=move |ev| username.set(event_target_value(&ev)) />
                </label>
                <label>"Password"
                    <input name="password" type="password" autocomplete="current-password" required
                        prop:value=password on:input=move |ev| password.set(event_target_value(&ev)) />
                </label>
                <ErrorBox error=error />
                <button type="submit" disabled=busy>{move || if busy.get() { "Signing in…" } else { "Sign in" }}</button>
            </form>
        </div>
    }
}
