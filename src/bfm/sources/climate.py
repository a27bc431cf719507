"""The analytic sample climate shared by the ERA5 and GBIF samplers.

A cheap, deterministic stand-in for the real climate with the right magnitudes and structure,
so that the offline demo has something learnable: the same seed gives the same geography and
weather to the ERA5 sample (gridded fields) and to the GBIF sample (species occurrences that
follow the temperature and the terrain).

Every field is a closed-form function of (time, latitude, longitude[, pressure]) built from a
few seeded plane waves, so it can be evaluated on any grid or at any point:

- geography: a smooth seeded field thresholded with a soft edge gives the land fraction
  (``lsm``, fractional along coasts); orography (0-2500 m) and soil type (1..7, 0 = water)
  are further smooth fields on land;
- 2 m temperature: annual mean 300 K at 30N to 265 K at 72N, a seasonal cycle (larger and
  earlier over land), a small diurnal cycle peaking at 14 local solar time, a -6.5 K/km lapse
  rate with orography and synoptic anomalies that travel east with the pressure systems;
- mean sea-level pressure: 101325 Pa plus eastward-moving waves of +-1-2 kPa; winds are
  geostrophic from that pressure field (reduced by friction near the surface) plus a westerly;
- pressure levels: temperature from the sea-level value and the lapse rate, smoothly capped by
  an isothermal stratosphere near 217 K; geopotential from the hypsometric equation; zonal wind
  growing to a jet near 250 hPa; specific humidity a height-dependent fraction of saturation.

Inputs: ``times`` a numpy datetime64 array (T,), ``lat``/``lon`` 1-D degree arrays; outputs
are float64 arrays (T, n_lat, n_lon) or (T, L, n_lat, n_lon); callers cast to float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from bfm.contracts.grid import EARTH_RADIUS_M

G = 9.80665  # m s-2
R_DRY = 287.05  # J kg-1 K-1
LAPSE_RATE = 0.0065  # K m-1
T_STRATOSPHERE = 217.0  # K
MSL_MEAN = 101325.0  # Pa
OMEGA = 7.292e-5  # s-1
RHO_AIR = 1.25  # kg m-3
YEAR_DAYS = 365.2425
MAX_OROGRAPHY = 2500.0  # m


@dataclass(frozen=True)
class Waves:
    """A sum of plane waves on the (lon, lat) plane in degrees, moving east at ``speed``.

    Attributes:
        kx, ky: wavenumbers in radians per degree of longitude / latitude, (N,).
        phase: phase offsets in radians, (N,).
        amp: amplitudes, (N,).
        speed: eastward phase speed in degrees of longitude per day, (N,) (0: fixed field).
    """

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray
    amp: np.ndarray
    speed: np.ndarray

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        n: int,
        wavelength: tuple[float, float],
        std: float,
        speed: tuple[float, float] = (0.0, 0.0),
    ) -> Waves:
        angle = rng.uniform(0, 2 * np.pi, n)
        k = 2 * np.pi / rng.uniform(*wavelength, n)
        # sqrt(2 / n): a sum of n unit cosines with random phases has std sqrt(n / 2).
        return cls(
            kx=k * np.cos(angle),
            ky=k * np.sin(angle),
            phase=rng.uniform(0, 2 * np.pi, n),
            amp=np.full(n, std * np.sqrt(2.0 / n)),
            speed=rng.uniform(*speed, n),
        )

    def _phases(
        self, lat: np.ndarray, lon: np.ndarray, days: np.ndarray | float, i: int
    ) -> np.ndarray:
        return self.kx[i] * (lon - self.speed[i] * days) + self.ky[i] * lat + self.phase[i]

    def value(self, lat: np.ndarray, lon: np.ndarray, days: np.ndarray | float = 0.0) -> Any:
        return sum(
            self.amp[i] * np.cos(self._phases(lat, lon, days, i)) for i in range(len(self.amp))
        )

    def gradient(
        self, lat: np.ndarray, lon: np.ndarray, days: np.ndarray | float = 0.0
    ) -> tuple[Any, Any]:
        """(d/dlat, d/dlon) per degree."""
        d_lat, d_lon = 0.0, 0.0
        for i in range(len(self.amp)):
            s = -self.amp[i] * np.sin(self._phases(lat, lon, days, i))
            d_lat = d_lat + s * self.ky[i]
            d_lon = d_lon + s * self.kx[i]
        return d_lat, d_lon


class Surface(NamedTuple):
    """Static surface fields on a grid, each (n_lat, n_lon)."""

    lsm: np.ndarray  # land fraction 0..1
    orography: np.ndarray  # m above sea level
    slt: np.ndarray  # soil type category 0..7 (0 = water), float


def days_since_epoch(times: np.ndarray) -> np.ndarray:
    """datetime64 (T,) -> float days since 1970-01-01."""
    seconds = np.asarray(times, dtype="datetime64[s]").astype(np.int64)
    return seconds / 86400.0


def annual_mean_t2m(lat: np.ndarray) -> np.ndarray:
    """Sea-level annual mean 2 m temperature (K): 300 K at 30 deg, 265 K at 72 deg."""
    return np.clip(300.0 - (35.0 / 42.0) * (np.abs(lat) - 30.0), 230.0, 302.0)


def saturation_specific_humidity(t: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    """kg kg-1 at temperature t (K) and pressure p (Pa); Tetens' formula over water."""
    e_s = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))
    return 0.622 * e_s / (p - 0.378 * e_s)


def _temperature_profile(t_sl: np.ndarray, p_sl: np.ndarray, p: float | np.ndarray) -> np.ndarray:
    """Constant lapse rate from sea level, smoothly capped by an isothermal stratosphere."""
    t_trop = t_sl * (p / p_sl) ** (R_DRY * LAPSE_RATE / G)
    width = 2.0  # K: softness of the tropopause (keeps t strictly monotonic in p)
    return T_STRATOSPHERE + width * np.logaddexp(0.0, (t_trop - T_STRATOSPHERE) / width)


@dataclass(frozen=True)
class Climate:
    """The sample climate of one seed; see the module docstring."""

    seed: int
    land: Waves
    relief: Waves
    soil: Waves
    pressure: Waves  # Pa anomaly of mean sea-level pressure, moving east
    warmth: Waves  # K anomaly, a quarter wave ahead of the pressure systems

    @classmethod
    def from_seed(cls, seed: int) -> Climate:
        rng = np.random.default_rng(seed)
        pressure = Waves.random(rng, 4, wavelength=(25.0, 45.0), std=900.0, speed=(5.0, 11.0))
        warmth = replace(pressure, phase=pressure.phase + np.pi / 2, amp=pressure.amp * 2.5 / 900)
        return cls(
            seed=seed,
            land=Waves.random(rng, 12, wavelength=(4.0, 16.0), std=1.0),
            relief=Waves.random(rng, 8, wavelength=(3.0, 10.0), std=1.0),
            soil=Waves.random(rng, 6, wavelength=(2.0, 8.0), std=1.0),
            pressure=pressure,
            warmth=warmth,
        )

    # --- static fields -------------------------------------------------------------------
    def surface(self, lat: np.ndarray, lon: np.ndarray) -> Surface:
        lat2, lon2 = np.asarray(lat)[:, None], np.asarray(lon)[None, :]
        # Bias 0.5 -> about 70 % land; width 0.5 -> coasts about half a degree wide.
        lsm = np.clip(0.5 + (self.land.value(lat2, lon2) + 0.5) / 0.5, 0.0, 1.0)
        inland = np.clip(2.0 * lsm - 1.0, 0.0, 1.0)
        relief = np.clip(0.35 * self.relief.value(lat2, lon2) + 0.15, 0.0, 1.0)
        orography = MAX_OROGRAPHY * relief * inland
        u = 0.5 + 0.5 * np.tanh(self.soil.value(lat2, lon2))
        slt = np.clip(1.0 + np.floor(7.0 * u), 1.0, 7.0)
        slt = np.where(lsm < 0.5, 0.0, slt)
        return Surface(lsm=lsm, orography=orography, slt=slt)

    # --- surface weather -----------------------------------------------------------------
    def sea_level_t(
        self, times: np.ndarray, lat: np.ndarray, lon: np.ndarray, lsm: np.ndarray
    ) -> np.ndarray:
        """Temperature reduced to sea level without the diurnal cycle, (T, n_lat, n_lon)."""
        days = days_since_epoch(times)[:, None, None]
        lat2, lon2 = np.asarray(lat)[:, None], np.asarray(lon)[None, :]
        hemisphere = np.where(lat2 >= 0, 1.0, -1.0)
        amplitude = 3.0 + lsm * (4.0 + 0.12 * (np.abs(lat2) - 30.0))
        peak_day = 200.0 + 25.0 * (1.0 - lsm)  # the sea lags the land
        season = np.cos(2 * np.pi * (days % YEAR_DAYS - peak_day) / YEAR_DAYS)
        synoptic = self.warmth.value(lat2, lon2, days)
        return annual_mean_t2m(lat2) + hemisphere * amplitude * season + synoptic

    def t2m(self, times: np.ndarray, lat: np.ndarray, lon: np.ndarray, surf: Surface) -> np.ndarray:
        days = days_since_epoch(times)[:, None, None]
        lon2 = np.asarray(lon)[None, :]
        local_hour = (days % 1.0) * 24.0 + lon2 / 15.0
        diurnal = (0.5 + 3.0 * surf.lsm) * np.cos(2 * np.pi * (local_hour - 14.0) / 24.0)
        t_sl = self.sea_level_t(times, lat, lon, surf.lsm)
        return t_sl + diurnal - LAPSE_RATE * surf.orography

    def msl(self, times: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        days = days_since_epoch(times)[:, None, None]
        lat2, lon2 = np.asarray(lat)[:, None], np.asarray(lon)[None, :]
        return MSL_MEAN + self.pressure.value(lat2, lon2, days)

    def geostrophic_wind(
        self, times: np.ndarray, lat: np.ndarray, lon: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) in m s-1 balancing the sea-level pressure anomaly, (T, n_lat, n_lon)."""
        days = days_since_epoch(times)[:, None, None]
        lat2, lon2 = np.asarray(lat)[:, None], np.asarray(lon)[None, :]
        dp_dlat, dp_dlon = self.pressure.gradient(lat2, lon2, days)
        per_degree = 180.0 / (np.pi * EARTH_RADIUS_M)  # degrees per metre northward
        phi = np.deg2rad(np.where(lat2 >= 0, 1, -1) * np.maximum(np.abs(lat2), 20.0))
        coriolis = 2 * OMEGA * np.sin(phi)  # kept away from 0 near the equator
        u = -dp_dlat * per_degree / (RHO_AIR * coriolis)
        v = dp_dlon * per_degree / np.cos(phi) / (RHO_AIR * coriolis)
        return u, v

    def wind10(
        self, times: np.ndarray, lat: np.ndarray, lon: np.ndarray, surf: Surface
    ) -> tuple[np.ndarray, np.ndarray]:
        u_g, v_g = self.geostrophic_wind(times, lat, lon)
        friction = 0.55 - 0.2 * surf.lsm  # land slows the wind more than the sea
        return friction * (7.0 + u_g), friction * v_g

    # --- pressure levels -----------------------------------------------------------------
    def pressure_levels(
        self,
        times: np.ndarray,
        levels_hpa: Sequence[int],
        lat: np.ndarray,
        lon: np.ndarray,
        surf: Surface,
        dtype: type = np.float64,
    ) -> dict[str, np.ndarray]:
        """z, t, u, v, q on the given levels (hPa, any order), each (T, L, n_lat, n_lon)."""
        t_sl = self.sea_level_t(times, lat, lon, surf.lsm)
        p_sl = self.msl(times, lat, lon)
        u_g, v_g = self.geostrophic_wind(times, lat, lon)
        days = days_since_epoch(times)[:, None, None]
        doy = days % YEAR_DAYS
        lat2 = np.asarray(lat)[:, None]
        jet_lat = 47.0 + 5.0 * np.cos(2 * np.pi * (doy - 200.0) / YEAR_DAYS)  # north in summer
        jet_strength = 30.0 * (1.0 + 0.3 * np.cos(2 * np.pi * (doy - 15.0) / YEAR_DAYS))
        jet_shape = np.exp(-(((lat2 - jet_lat) / 10.0) ** 2))
        geopotential = self._geopotential(t_sl, p_sl, levels_hpa)
        shape = (len(times), len(levels_hpa), len(lat), len(lon))
        out: dict[str, np.ndarray] = {k: np.empty(shape, dtype=dtype) for k in "ztuvq"}
        for k, level in enumerate(levels_hpa):
            p = 100.0 * level
            t = _temperature_profile(t_sl, p_sl, p)
            height = np.log(p / 25000.0)
            jet = jet_strength * jet_shape * np.exp(-(height**2) / (2 * 0.5**2))
            growth = 0.9 + 0.6 * np.exp(-(np.log(p / 30000.0) ** 2) / 0.8)
            humidity = 0.05 + 0.75 * (p / 100000.0) ** 3
            out["z"][:, k] = geopotential[level]
            out["t"][:, k] = t
            out["u"][:, k] = 5.0 + jet + growth * u_g
            out["v"][:, k] = growth * v_g
            out["q"][:, k] = humidity * saturation_specific_humidity(t, p)
        return out

    @staticmethod
    def _geopotential(
        t_sl: np.ndarray, p_sl: np.ndarray, levels_hpa: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """Hypsometric equation, integrated upward from sea level (z = 0 at p = msl).

        Each layer's mean temperature (in log-pressure) comes from Simpson's rule on the
        analytic profile, so the result does not depend on how coarse the levels are.
        """
        phi = np.zeros_like(t_sl)
        p_below: np.ndarray | float = p_sl
        out: dict[int, np.ndarray] = {}
        for level in sorted(levels_hpa, reverse=True):
            p = 100.0 * level
            p_mid = np.sqrt(p * p_below)
            t_mean = (
                _temperature_profile(t_sl, p_sl, p_below)
                + 4 * _temperature_profile(t_sl, p_sl, p_mid)
                + _temperature_profile(t_sl, p_sl, p)
            ) / 6.0
            phi = phi + R_DRY * t_mean * np.log(p_below / p)
            out[level], p_below = phi, p
        return out
