"""Account pages: sign-up, profile and password, SSH keys, API tokens."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from panel.accounts import selectors, services
from panel.accounts.forms import ApiTokenForm, ProfileForm, SignupForm, SshKeyForm
from panel.api.models import ApiToken
from panel.api.services.tokens import create_token, revoke_token

NEW_TOKEN_SESSION_KEY = "berth_new_api_token"


@sensitive_post_parameters("password1", "password2")
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("instance-list")
    if not services.signup_is_open():
        return render(request, "accounts/signup_closed.html", status=403)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            customer = services.sign_up(
                username=form.cleaned_data["username"], email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"], name=form.cleaned_data["name"],
            )
        except services.SignupClosed:
            return render(request, "accounts/signup_closed.html", status=403)
        login(request, customer.user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome to Berth. Your account is ready: order your first instance.")
        return redirect("instance-order")
    return render(request, "accounts/signup.html", {"form": form})


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    customer = selectors.customer_of(request.user)
    initial = {"email": request.user.email, "name": customer.name if customer else ""}
    form = ProfileForm(request.POST or None, user=request.user, customer=customer, initial=initial)
    if request.method == "POST" and form.is_valid():
        services.update_profile(user=request.user, name=form.cleaned_data.get("name", ""),
                                email=form.cleaned_data["email"])
        messages.success(request, "Profile saved.")
        return redirect("profile")
    quota = selectors.quota_usage(customer) if customer else None
    return render(request, "accounts/profile.html",
                  {"form": form, "customer": customer, "quota": quota, "section": "profile"})


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("profile")
    extra_context = {"section": "password"}

    def form_valid(self, form):
        messages.success(self.request, "Password changed. Other sessions were logged out.")
        return super().form_valid(form)


@login_required
def ssh_keys(request: HttpRequest) -> HttpResponse:
    customer = selectors.customer_of(request.user)
    form = SshKeyForm(request.POST or None, customer=customer) if customer else None
    if request.method == "POST" and form is not None and form.is_valid():
        try:
            key = services.add_ssh_key(customer=customer, name=form.cleaned_data["name"],
                                       key=form.parsed, actor=request.user)
        except services.DuplicateKey as exc:
            form.add_error(exc.field, str(exc))
        else:
            messages.success(request, f"Key {key.name} added ({key.fingerprint}).")
            # The order page links here when the customer has no key yet; go back there.
            return redirect("instance-order" if request.GET.get("next") == "order" else "ssh-keys")
    keys = customer.ssh_keys.all() if customer else []
    return render(request, "accounts/ssh_keys.html",
                  {"form": form, "keys": keys, "customer": customer, "section": "keys"})


@login_required
@require_POST
def ssh_key_delete(request: HttpRequest, pk: int) -> HttpResponse:
    key = selectors.get_ssh_key(selectors.customer_of(request.user), pk)
    services.delete_ssh_key(ssh_key=key, actor=request.user)
    messages.success(request, f"Key {key.name} deleted. Instances that have it keep it.")
    return redirect("ssh-keys")


@login_required
def api_tokens(request: HttpRequest) -> HttpResponse:
    customer = selectors.customer_of(request.user)
    form = ApiTokenForm(request.POST or None) if customer else None
    if request.method == "POST" and form is not None and form.is_valid():
        token, key = create_token(name=form.cleaned_data["name"], scope=ApiToken.Scope.CUSTOMER,
                                  customer=customer)
        # Shown once, on the page the redirect leads to; never stored anywhere else.
        request.session[NEW_TOKEN_SESSION_KEY] = {"id": token.pk, "key": key}
        return redirect("api-tokens")
    new_token = request.session.pop(NEW_TOKEN_SESSION_KEY, None)
    return render(request, "accounts/api_tokens.html", {
        "form": form, "tokens": selectors.customer_tokens(customer), "customer": customer,
        "new_token": new_token, "section": "tokens",
    })


@login_required
@require_POST
def api_token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = selectors.get_customer_token(selectors.customer_of(request.user), pk)
    revoke_token(token=token)
    messages.success(request, f"Token {token.name} revoked: it no longer works.")
    return redirect("api-tokens")
