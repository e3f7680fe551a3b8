// Posts the login as JSON (same origin); the server sets the session cookie.
"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const token = form.token.value;
  const body = token
    ? { token, username: form.username.value }
    : { username: form.username.value, password: form.password.value };
  const response = await fetch("/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.ok) {
    window.location.assign("/");
  } else {
    document.getElementById("error").textContent =
      response.status === 401 ? "Wrong user, password or token." : "Sign-in failed (HTTP " + response.status + ").";
  }
});
