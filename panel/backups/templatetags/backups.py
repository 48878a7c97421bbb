from django import template

register = template.Library()


@register.inclusion_tag("backups/_panel.html", takes_context=True)
def backups_panel(context, instance):
    """The "Snapshots & backups" tab's content, as its part URL renders it."""
    from panel.backups.views import panel_context  # noqa: PLC0415

    request = context["request"]
    return {**panel_context(instance, request.user), "csrf_token": context.get("csrf_token"),
            "request": request}
