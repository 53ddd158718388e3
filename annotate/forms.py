"""The forms of the lead's pages that are not the admin's: the Quality page's thresholds and decisions."""

from django import forms

from annotate.models import MembershipEvent, Project
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
