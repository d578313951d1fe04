"""Vocabulary of the offline finding extractor: label synonyms, exclusions, negation and hedge cues.

This module is data: regular expressions, grouped by what they mean. ``training.findings`` applies
them. The patterns are general phrasings of chest CT reports (CT-RATE style, i.e. English
translations of Turkish reports, and the synthetic phantom reports), not copies of individual
reports. All patterns are matched case-insensitively against one sentence at a time.
"""

from __future__ import annotations

import re

#: The 18 CT-RATE abnormality labels, spelled and ordered as the columns of CT-RATE's label files.
LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

_CALC = r"(?:calcifi\w*|calcific|calcified|calcium|atherosclero\w*|atherom\w*|plaques?)"
# Arteries other than the coronaries ("coronary arteries" must not count as "arteries").
_VESSEL = (
    r"(?:(?<!abdominal )aort\w*|(?<!coronary )(?<!descending )arter(?:y|ies|ial)|arch|arcus|"
    r"(?<!coronary )vascular|(?<!coronary )vessels?|carotid|subclavian|brachiocephalic|supra-?aortic)"
)
_CORONARY = r"(?:coronar\w*|lad|lcx|rca|left anterior descending|circumflex)\b"

#: Phrases that mention each label. Matching one is a *mention*; negation is decided separately.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "Medical material": (
        r"\bcatheters?\b",
        r"\bstents?\b",
        r"\bpace-?makers?\b",
        r"\bprosthe\w+",
        r"\b(?:sternotomy|sternal|cerclage|metallic|surgical|metal) (?:wires?|sutures?|clips?|staples?)",
        r"\bsuture (?:materials?|lines?)\b",
        r"\b(?:surgical|vascular|metallic) clips?\b",
        r"\bclips?\b",
        r"\b(?:endotracheal|tracheostomy|nasogastric|orogastric|chest|thoracostomy|drainage|feeding) "
        r"(?:tubes?|cannula\w*|catheters?)",
        r"\btracheostomy\b",
        r"\bcannula\w*\b",
        r"\bdrains?\b",
        r"\b(?:port|picc|jugular|subclavian) catheters?\b",
        r"\bport\b",
        r"\belectrodes?\b",
        r"\bpacing (?:leads?|wires?)\b",
        r"\b(?:icd|cied|cabg)\b",
        r"\bgrafts?\b",
        r"\bcoils?\b",
        r"\bembolization materials?\b",
        r"\b(?:medical|surgical|foreign|metallic|fixation|osteosynthesis) "
        r"(?:materials?|bod(?:y|ies)|devices?|implants?)",
        r"\bfixators?\b",
        r"\b(?:peg|gastrostomy|jejunostomy)\b",
        r"\b(?:screws?|plates?) (?:fixation|fixing)\b",
        r"\b(?:fixation|transpedicular) screws?\b",
        r"\bvalve replacement\b",
        r"\bmechanical valves?\b",
        r"\bmetallic (?:artifacts?|densit\w+|foreign)",
        r"\b(?:breast|silicone) implants?\b",
        r"\bexpanders?\b",
    ),
    "Arterial wall calcification": (
        rf"\b{_CALC}\b[\w\s,-]{{0,100}}?\b{_VESSEL}",
        rf"\b{_VESSEL}\b[\w\s,-]{{0,40}}?\b{_CALC}",
        # Generic atherosclerosis counts unless it is said of the coronaries alone.
        r"\b(?:atherosclero\w*|atherom\w*)(?![\w\s,-]{0,40}"
        r"(?:coronar|lad\b|rca\b|left anterior descending|circumflex|abdominal|iliac|infrarenal))",
        r"\b(?:arterial|aortic|vascular) (?:wall )?calcifi\w+",
    ),
    "Cardiomegaly": (
        r"\bcardiomegal\w*",
        r"\bcardiac enlargement\b",
        r"\benlargement of the heart\b",
        r"\b(?:enlarged|increased|large) (?:heart|cardiac)(?: size| dimensions?| silhouette| shadow)?\b",
        r"\b(?:heart|cardiac)(?: sizes?| dimensions?| contours?| silhouette| volume| shadow)*,?"
        r"(?: is| are| was| were| has| have)?(?: \w+ly)? (?:enlarged|increased|large\b|larger|above normal)",
        r"\bincreas\w* in (?:the )?(?:heart|cardiac) (?:sizes?|dimensions?|volume)",
        r"\b(?:cardiothoracic (?:index|ratio)|ctr|cti)\b[\w\s]{0,25}?\b(?:increas\w*|high|above)",
        r"\b(?:increas\w*|high) (?:in )?(?:the )?(?:cardiothoracic (?:index|ratio)|ctr|cti)\b",
    ),
    "Pericardial effusion": (
        r"\bpericardial(?:[\s-]+\w+){0,2}?[\s-]+(?:effusions?|fluid)\b",
        r"\b(?:effusions?|fluid)\b[\w\s-]{0,80}?\b(?:in|within|of|at) (?:the )?(?:\w+ ){0,3}?pericardi\w*",
        r"\bhydropericardi\w*",
    ),
    "Coronary artery wall calcification": (
        rf"\b{_CALC}\b[\w\s,-]{{0,100}}?\b{_CORONARY}",
        rf"\b{_CORONARY}\b[\w\s,-]{{0,40}}?\b{_CALC}",
    ),
    "Hiatal hernia": (
        r"\bhiat(?:al|us) hernia\w*",
        r"\bhiatal\b",
        r"\b(?:diaphragmatic|paraesophageal|sliding) hernia\w*",
        r"\bhernia\w* of the stomach\b",
        r"\bstomach herniat\w+",
    ),
    "Lymphadenopathy": (
        r"\blymphadenopath\w*",
        r"\badenopath\w*",
        r"\blymph ?nodes?\b(?! stations?)",
        r"\b(?:lap|laps)\b",
        r"\blymph node (?:enlargement|conglomerate)",
    ),
    "Emphysema": (
        r"\bemphysem\w*",
        r"\bbullae?\b",
        r"\bbullous\b",
        r"\bblebs?\b",
    ),
    "Atelectasis": (
        r"\batelecta\w*",
        r"\bcollapsed? (?:of )?(?:the )?(?:lung|lobe|segment)",
    ),
    "Lung nodule": (
        r"\bnodules?\b",
        r"\bmicronodul\w*",
        r"\bnodular (?:lesions?|densit\w+|opacit\w+|images?|appearances?|formations?|structures?|foci)\b",
        r"\bgranulomas?\b",
    ),
    "Lung opacity": (
        # a ground-glass nodule or halo is a nodule
        r"\bground[- ]glass(?![- ](?:\w+[- ]){0,2}?(?:nodul\w*|halo))",
        r"\bgg[oa]\b",
        r"\bcrazy[- ]paving\b",
    ),
    "Pulmonary fibrotic sequela": (
        r"\bfibro\w*",
        r"\bsequel\w*",
        r"\bscar\w*",
        r"\b(?:parenchymal|fibrous|linear|fibroatelectatic|fibrotic|subpleural|pleural) bands?\b",
        r"\bband-like\b",
        r"\bpleuro-?parenchymal (?:densit\w+|bands?|recession|retraction|thickening)",
        r"\bhoneycomb\w*",
        r"\breticul\w+",
    ),
    "Pleural effusion": (
        r"\bpleural(?:[\s-]+\w+){0,2}?[\s-]+(?:effusions?|fluid)\b",
        r"\b(?:effusions?|fluid)\b[\w\s-]{0,80}?\b(?:in|within|of|at|on) (?:the )?(?:[\w-]+ ){0,3}?"
        r"(?:pleura\w*|hemithora\w*|lungs?)\b",
        r"\bhydro-?(?:pneumo)?thora\w+",
        r"\bhydropn\w*thora\w+",
        r"\bhemo-?thora\w+",
        r"\bempyema\b",
        r"\b(?:bilateral|right|left)(?:-sided)? effusions?\b",
    ),
    "Mosaic attenuation pattern": (
        r"\bmosaic",
        r"\bair[- ]trapping\b",
    ),
    "Peribronchial thickening": (
        r"\bperibronch\w*\s+(?:[\w-]+\s+){0,3}(?:thicken\w*|thickness)",
        r"\bthick\w*\s+(?:[\w-]+\s+){0,3}(?:peribronch\w*|bronch\w* walls?)",
        r"\bbronch\w* wall (?:thicken\w*|thickness)",
    ),
    "Consolidation": (
        r"\bconsolidat\w*",
        r"\bair bronchogram\w*",
    ),
    "Bronchiectasis": (
        r"\bbronchiectas\w*",
        r"\bbronchiectatic\b",
        r"\bbronchiolectas\w*",
    ),
    "Interlobular septal thickening": (
        r"\b(?:inter\w*[- ])?sept(?:a|al|um)\b\s+(?:[\w-]+\s+)?(?:thicken\w*|thickness)",
        r"\binter\w*sept\w*\s+(?:thicken\w*|thickness)",
        r"\bthicken\w* (?:of |in )?(?:the )?(?:interlobular )?sept(?:a|al|um)\b",
        r"\binter(?:lobular|lobar)[- ]sept\w*",
        r"\binterstitial (?:\w+ )?thicken\w*",
        r"\bthicken\w* (?:of |in )?(?:the )?(?:\w+ )?interstiti\w*",
    ),
}

#: A mention is discarded when one of these matches near it (same sentence, within
#: ``EXCLUSION_WINDOW`` characters): the words then describe another organ or another kind of thing
#: ("thyroid nodule", "subcutaneous emphysema", "contrast material", "intrapulmonary lymph node").
EXCLUSIONS: dict[str, tuple[str, ...]] = {
    "Medical material": (
        r"\bcontrast (?:material|agent|medium)",
        r"\bmaterial (?:uptake|enhancement)",
        r"\bport(?:al)? (?:vein|venous)",
        r"\bgrafts? versus\b",
        r"\bclip(?:ped)? (?:sign)",
        # "peritoneal implants" are metastases
        r"\b(?:peritone\w*|omen\w*|metasta\w*)\b",
    ),
    "Arterial wall calcification": (r"\bvalv\w*",),
    "Lymphadenopathy": (
        r"\bintra-?pulmonary\b",
        r"\b(?:peri)?fissur\w*",
        r"\bsubpleural lymph",
        r"\bintramamm\w*",
        r"\blymphangi\w*",
    ),
    "Emphysema": (r"\bsubcutaneous\b", r"\bsoft tissue\b", r"\bmediastinal emphysema\b"),
    "Lung nodule": (
        r"\bthyroid\w*|\bgoiter\b|\bhepat\w*|\bliver\b|\badrenal\w*|\bbreast\w*|\bmamm\w*",
        r"\brenal\b|\bkidneys?\b|\bspleen\b|\bsplenic\b|\bpancrea\w*|\bmesenter\w*|\bcolon\b",
        r"\blymph\b|\bskin\b|\bsubcutaneous\b|\bmediastin\w*|\bpleural nodul\w*|\bin the pleura\b",
        # hypodense nodules belong to solid organs; Schmorl nodes to vertebrae; centrilobular
        # nodules with tree-in-bud are small-airway infection, not CT-RATE's lung nodule
        r"\bhypo-?dens\w*|\bschmorl\b|\bcentri-?(?:acinar|lobular)\b",
    ),
    "Lung opacity": (r"\bliver\b|\bhepat\w*", r"\bbreast\w*"),
    "Pulmonary fibrotic sequela": (
        r"\bfibroadenom\w*|\bfibroid\w*|\bfibrous dysplasia\b|\bfibrocystic\b",
        r"\bbreast\w*|\bliver\b|\bhepat\w*|\bkidneys?\b|\brenal\b|\bperirenal\b|\bspleen\b|\bsplenic\b",
        r"\bribs?\b|\bfracture\w*|\bbones?\b|\bvertebra\w*|\bfat(?:ty)?\b|\bmesenter\w*|\bgastric\b",
        r"\blymph\b|\bmediastin\w*",
    ),
}

#: Weaker phrasings of a label with exclusions of their own, as ``(label, synonyms, exclusions)``.
#: "Density increase" is an opacity unless it describes scarring or a tissue outside
#: the lung; CT-RATE labels such sequelae as fibrotic sequela, not opacity.
SECONDARY: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "Lung opacity",
        (
            r"\bopacit(?:y|ies)\b",
            r"\b(?:density|densities|attenuation) increase",
            r"\bincrease[sd]? (?:in )?(?:the )?(?:\w+ )?(?:density|densities|attenuation)\b",
            r"\binfiltrat(?:ion|ions|es?|ive)\b",
            r"\bdep[ae]nd[ae]nt densit\w*",
        ),
        (
            r"\bsequel\w*|\bfibro\w*|\bbands?\b|\bband-like\b|\blinear\b|\bscar\w*|\bpleuro-?parenchymal\b",
            r"\bmass\b",
            r"\bliver\b|\bhepat\w*|\bbones?\b|\bvertebra\w*|\bsclero\w*|\bmarrow\b|\bleukemi\w*",
            r"\bfat(?:ty)?\b|\bkidneys?\b|\brenal\b|\bperirenal\b|\bspleen\b|\bpancrea\w*|\bthym\w*",
            r"\bbreast\w*|\bskin\b|\bsubcutaneous\b|\bsoft tissue\b|\bmetallic\b|\bmediastin\w*",
        ),
    ),
)

#: Characters either side of a mention in which an exclusion cue must lie to discard it.
EXCLUSION_WINDOW = 60

# Negation cues that precede what they negate ("no pleural effusion", "without consolidation").
NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|absence of|absent|free of|negative for|neither|nor|rule out|ruled out|"
    r"(?:be )?evaluated for|to exclude)\b",
    re.IGNORECASE,
)

# Negation cues that follow what they negate ("pleural effusion was not detected").
NEGATION_AFTER = re.compile(
    r"\b(?:(?:is|are|was|were|has been|have been|could be|can be|did|do|does)\s+)?not\s+"
    r"(?:been\s+)?(?:\w+ly\s+)?(?:observed|detected|seen|identified|noted|found|present|visualized|"
    r"visible|evident|demonstrated|encountered|monitored|determined|distinguished|appreciated|"
    r"shown|observable|detectable|seen)\b"
    r"|\b(?:is|are|was|were|has|have)\s+(?:been\s+)?(?:absent|resolved|disappeared)\b"
    r"|\bno longer\b|\bor absent\b"
    r"|\b(?:completely|totally|fully) (?:regressed|resolved|disappeared)\b|\b(?:resolved|disappeared)\b"
    r"|\bexcluded\b(?<!not excluded)",
    re.IGNORECASE,
)

# Phrases that contain a negation word but do not negate a finding ("cannot be excluded",
# "no significant change"). They are blanked before negation is looked for.
PSEUDO_NEGATION = re.compile(
    r"\b(?:can ?not|could not|can't|not to) be (?:excluded|ruled out|differentiated|distinguished)\b"
    r"|\bnot (?:be )?(?:excluded|ruled out)\b"
    r"|\bno (?:\w+ )?(?:change|difference|progression|regression|increase|decrease)s?\b"
    r"|\bnot (?:\w+ly )?(?:changed|increased|decreased|progressed)\b"
    r"|\bnot only\b"
    r"|\bno (?:\w+ )?(?:contrast|iv contrast|ivcm)\b"
    r"|\bnot (?:given|administered|enhanced|optimal\w*)\b"
    r"|\b(?:did|does|do) not (?:reach|meet|exceed)\b"
    r"|\bnot (?:reach\w*|in pathological|pathological|significant(?:ly)?)\b",
    re.IGNORECASE,
)

# Where a negation's reach ends: a contrast or a new clause.
SCOPE_BREAK = re.compile(
    r"\b(?:but|however|although|though|whereas|while|except|apart from|other than|aside from|"
    r"besides|in addition|additionally|also|yet|which|who)\b"
    r"|\bthere (?:is|are|was|were)\b"
    r"|[;:(]",
    re.IGNORECASE,
)

# A verb group that closes the clause a leading negation opened ("No effusion was detected, ...").
CLAUSE_VERB = re.compile(
    r"(?:\b(?:is|are|was|were|has been|have been|had been)\s+(?:\w+ly\s+)?(?:not\s+)?"
    r"(?:observed|detected|seen|identified|noted|found|present|visualized|evident|demonstrated|"
    r"encountered|monitored|determined|appreciated|shown)\b"
    r"|\b(?:observed|detected|seen|noted|identified)\b)"
    # "X observed in the previous examination was not detected": a reduced relative, not a clause
    r"(?! (?:in|on|at) (?:the )?(?:previous|prior|former|old|earlier|last))",
    re.IGNORECASE,
)

# Hedged statements. CT-RATE's labels count hedged findings as present, so ``extract`` does too;
# ``extract_detailed`` reports the hedge.
UNCERTAINTY = re.compile(
    r"\?|\b(?:possible|possibly|probable|probably|suspicious|suspected|suspicion|questionable|"
    r"likely|may|might|could|cannot be excluded|not excluded|differential|consider\w*|suggest\w*|"
    r"in favor of|compatible with|consistent with)\b",
    re.IGNORECASE,
)

SIDE = re.compile(
    r"\b(?P<bilateral>bilateral\w*|both (?:lungs?|hemithora\w+|sides|hil\w+)|bibasal\w*)\b"
    r"|\b(?P<right>right)\b|\b(?P<left>left)\b",
    re.IGNORECASE,
)

# Lobe phrases. "upper lobe of the right lung", "right lung upper lobe", "right upper lobe", "RUL".
_LOBE_WORD = r"(?P<level>upper|middle|lower)"
LOBE = re.compile(
    rf"\b(?P<side1>right|left)\s+(?:lung\s+)?{_LOBE_WORD}\s+lobes?\b"
    rf"|\b(?P<level2>upper|middle|lower)\s+lobes?\s+of\s+the\s+(?P<side2>right|left)\b"
    r"|\b(?P<abbr>rul|rml|rll|lul|lll)\b"
    r"|\b(?P<middle>middle lobe)\b"
    r"|\b(?P<lingula>lingul\w*)\b",
    re.IGNORECASE,
)

# Lobes of both lungs at once: "both lower lobes", "lower lobes of both lungs".
BOTH_LOBES = re.compile(
    r"\b(?:both|bilateral)\s+(?:lungs?\s+)?(?P<level>upper|lower)\s+lobes?\b"
    r"|\b(?P<level2>upper|lower)\s+lobes?\s+of\s+both\s+lungs?\b",
    re.IGNORECASE,
)

SIZE = re.compile(
    r"(?P<a>\d+(?:[.,]\d+)?)(?:\s*[x×*]\s*(?P<b>\d+(?:[.,]\d+)?))?(?:\s*[x×*]\s*(?P<c>\d+(?:[.,]\d+)?))?"
    r"\s*-?\s*(?P<unit>mm|cm|millimet\w*|centimet\w*)\b",
    re.IGNORECASE,
)
