"""The forms of the lead's pages that are not the admin's: the Quality page's thresholds and decisions, and the
project's settings."""

from datetime import timedelta
from typing import Any

from django import forms

from annotate.models import MAX_SCALE_POINTS, Judge, MembershipEvent, Project, TaskKind
from annotate.quality_reports import THRESHOLDS


def _share(label: str, help_text: str) -> forms.FloatField:
    return forms.FloatField(label=label, min_value=0, max_value=1, help_text=help_text)


class ThresholdsForm(forms.ModelForm):
    """What flags an annotator; the shares and p-values from 0 to 1, as the database holds them."""

    min_gold_accuracy = _share("Lowest gold accuracy", "0–1: flag below this share of gold tasks answered right.")
    min_competence = _share("Lowest competence", "0–1: flag below this (0 is chance, 1 always right).")
    position_bias_p = _share("Position-bias p-value", "0–1: flag a share for the first shown this unlikely by chance.")
    max_fast_share = _share("Highest fast share", "0–1: flag above this share of answers faster than the floor.")

    class Meta:
        model = Project
        fields = THRESHOLDS
        labels = {"fast_seconds": "Fast floor (seconds)"}
        help_texts = {"fast_seconds": "An answer quicker than this is fast; changing it recomputes the figures."}


class DecisionForm(forms.Form):
    """A lead's decision on one member (Membership.decide says which need a reason)."""

    action = forms.ChoiceField(choices=MembershipEvent.Kind.choices)
    reason = forms.CharField(required=False, max_length=1000)


class LinesField(forms.CharField):
    """A list of names, one a line in a textarea; blank lines are dropped."""

    widget = forms.Textarea(attrs={"rows": 4})

    def to_python(self, value: Any) -> list[str]:
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list) else value


class MinutesField(forms.FloatField):
    """A duration typed in minutes (1.5 is 90 seconds)."""

    def to_python(self, value: Any) -> timedelta | None:
        minutes = super().to_python(value)
        try:
            return None if minutes is None else timedelta(minutes=minutes)
        except (OverflowError, ValueError):  # inf, nan, or more days than a timedelta holds
            raise forms.ValidationError("Give a number of minutes.", code="invalid") from None

    def validate(self, value: Any) -> None:
        forms.Field.validate(self, value)  # the range is the model's rule (Project.lease_length)

    def prepare_value(self, value: Any) -> Any:
        return f"{value.total_seconds() / 60:g}" if isinstance(value, timedelta) else value


class ProjectSettingsForm(forms.ModelForm):
    """The settings page's form: the model's own validation (Project.clean, its fields' validators) names the field at
    fault; the scale's descriptions come as one field a point (description-<point>), as the page shows them."""

    task_kinds = forms.MultipleChoiceField(
        choices=TaskKind.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,  # none ticked is the model's error ("Enable at least one task kind.")
        help_text="Annotators are given tasks of the kinds ticked.",
    )
    labels = LinesField(required=False, help_text="One a line. Annotators may tick any that apply when rating.")
    lease_length = MinutesField(
        label="Lease length (minutes)", help_text=Project._meta.get_field("lease_length").help_text
    )
    routing_confidence = _share(
        "Confidence to take the judge's label", "0–1: at or above it, the judge's label is taken."
    )
    routing_audit_share = _share(
        "Audit share", "0–1: of the tasks judged confidently, this share still goes to people."
    )
    suggestion_control_share = _share(
        "Control group", "0–1: share of leases shown no suggestion, to measure how often people follow it."
    )

    class Meta:
        model = Project
        fields = [
            *("task_kinds", "text_format", "overlap", "fill", "lease_length", "max_open_leases", "gold_rate"),
            "edit_window_minutes",
            *("rating_min", "rating_max", "labels", "guidelines"),
            *("samples_per_prompt", "sample_prompts", "pair_selection", "sample_rating_tasks"),
            *("judge", "judge_votes_count", "routing", "routing_confidence", "routing_audit_share"),
            *("show_judge_suggestions", "suggestion_control_share"),
        ]
        labels = {
            "overlap": "Overlap (annotations per task)",
            "fill": "Queue fill order",
            "max_open_leases": "Tasks held at once",
            "gold_rate": "Gold task rate (one in …)",
            "edit_window_minutes": "Answers can be changed for (minutes)",
            "rating_min": "Bottom of the scale",
            "rating_max": "Top of the scale",
            "samples_per_prompt": "Samples per prompt",
            "sample_rating_tasks": "Also make rating tasks of new samples",
            "judge": "The project's judge",
            "judge_votes_count": "Judges' answers count toward the overlap",
            "routing": "Hybrid labelling: route tasks by the judge's answer",
            "show_judge_suggestions": "Show annotators the judge's suggestion",
        }
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 14})}

    max_scale_points = MAX_SCALE_POINTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, label_suffix="", **kwargs)
        # The project's own judges only: a judge of another project is not offered, and refused if posted.
        self.fields["judge"].queryset = self.instance.judges.all() if self.instance.pk else Judge.objects.none()
        self.fields["judge"].empty_label = "None"
        self.fields["judge"].label_from_instance = lambda judge: f"{judge.name} — {judge.get_kind_display()}"

    def scale(self) -> list[dict[str, Any]]:
        """The scale's points as the page lists them, each with its description: as typed, else as saved."""
        if (bounds := self._typed_scale()) is None:
            return []
        low, high = bounds
        saved = self.instance.rating_descriptions or {}
        return [
            {
                "point": point,
                "name": f"description-{point}",
                "description": self.data.get(f"description-{point}", saved.get(str(point), ""))
                if self.is_bound
                else saved.get(str(point), ""),
            }
            for point in range(low, high + 1)
        ]

    def typed_scale_ok(self) -> bool:
        return self._typed_scale() is not None

    def kept_descriptions(self) -> list[tuple[str, str]]:
        """While the bounds typed make no scale, the descriptions typed, to carry on hidden until they do."""
        if self.typed_scale_ok():
            return []
        return [(name, value) for name, value in self.data.items() if name.startswith("description-")]

    def _typed_scale(self) -> tuple[int, int] | None:
        """The bounds as typed (the saved ones before a POST), if they make a scale the model accepts."""
        if not self.is_bound:
            return self.instance.rating_min, self.instance.rating_max
        try:
            low, high = int(self.data.get("rating_min", "")), int(self.data.get("rating_max", ""))
        except ValueError:
            return None
        return (low, high) if low < high and high - low < MAX_SCALE_POINTS else None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        low, high = cleaned.get("rating_min"), cleaned.get("rating_max")
        if low is not None and high is not None:
            # Only the scale's points: the descriptions of points a shrunk scale left out go with them.
            self.instance.rating_descriptions = {
                str(point): text
                for point in range(low, min(high, low + MAX_SCALE_POINTS - 1) + 1)
                if (text := self.data.get(f"description-{point}", "").strip())
            }
        return cleaned

    def saved_fields(self) -> list[str]:
        return [*self.Meta.fields, "rating_descriptions"]
