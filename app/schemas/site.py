"""A site's own operating points, chosen by `medimg eval --choose-operating-point` on its labelled data.

Loaded from MEDIMG_SITE_CONFIG and laid over the manifest of the model they were measured on (matched by id
and sha256, so a new model version never inherits a threshold chosen for another); the manifest file itself
is never changed.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.schemas.manifest import ModelManifest, OperatingPoint


class SiteModelPoints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str
    model_version: int
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The model the points were measured on")
    operating_points: list[OperatingPoint] = Field(min_length=1)
    default_operating_point: str | None = Field(None, description="Served unless a request names another point")


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: str = Field("site", description="Who measured the points, for the record")
    models: list[SiteModelPoints] = Field(default_factory=list)

    def apply(self, manifest: ModelManifest) -> ModelManifest:
        """The manifest with this site's points added (a site point replaces a manifest point of its name)."""
        for entry in self.models:
            if entry.model_id == manifest.id and entry.model_sha256 == manifest.sha256:
                names = {p.name for p in entry.operating_points}
                points = [p for p in manifest.operating_points if p.name not in names] + entry.operating_points
                return ModelManifest.model_validate({
                    **manifest.model_dump(), "operating_points": [p.model_dump() for p in points],
                    "default_operating_point": entry.default_operating_point or manifest.default_operating_point,
                })
        return manifest


class SiteConfigError(ValueError):
    pass


def load_site_config(path: Path | None) -> SiteConfig | None:
    if path is None:
        return None
    try:
        return SiteConfig.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise SiteConfigError(f"MEDIMG_SITE_CONFIG={path}: cannot read it ({exc.strerror})") from exc
    except ValidationError as exc:
        raise SiteConfigError(f"MEDIMG_SITE_CONFIG={path}: not a site configuration: {exc}") from exc


def merge_site_points(config: SiteConfig | None, manifest: ModelManifest, point: OperatingPoint,
                      site: str) -> SiteConfig:
    """`config` with `point` as the default for `manifest`'s exact model, other entries kept."""
    config = config or SiteConfig(site=site)
    others = [m for m in config.models if m.model_id != manifest.id]
    kept = next((m for m in config.models if m.model_id == manifest.id and m.model_sha256 == manifest.sha256), None)
    points = [p for p in (kept.operating_points if kept else []) if p.name != point.name] + [point]
    entry = SiteModelPoints(model_id=manifest.id, model_version=manifest.version, model_sha256=manifest.sha256,
                            operating_points=points, default_operating_point=point.name)
    return SiteConfig(site=config.site, models=[*others, entry])
