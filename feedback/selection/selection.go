package selection

import (
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
)

// Config tunes which cells become feedback samples. Zero values take the
// defaults noted.
type Config struct {
	// Threshold is the model's decision threshold on p(parasitized);
	// default 0.5.
	Threshold float64
	// A cell is uncertain when |p - Threshold| <= Band (default 0.1) or its
	// binary entropy is at least MinEntropy bits (default 0.95, i.e.
	// p within about 0.4..0.6).
	Band       float64
	MinEntropy float64
	// DriftRate is the fraction of cells kept from windows the drift
	// monitor flagged (default 0.05).
	DriftRate float64
	// RandomRate is the fraction of all cells kept as the unbiased slice,
	// drawn independently in each of Strata score strata (default 0.005
	// and 10), with at most MaxPerWindow/Strata per stratum per window so
	// that rare scores are represented too.
	RandomRate float64
	Strata     int
	// MaxPerWindow caps samples per drift window (default 50).
	MaxPerWindow int
	// DailyBytes caps the crop bytes selected per UTC day (default 16 MiB)
	// so that feedback never competes with results on a slow link.
	DailyBytes int64
	Seed       uint64
	Now        func() time.Time
}

func (c *Config) defaults() {
	if c.Threshold <= 0 || c.Threshold >= 1 {
		c.Threshold = 0.5
	}
	if c.Band <= 0 {
		c.Band = 0.1
	}
	if c.MinEntropy <= 0 {
		c.MinEntropy = 0.95
	}
	if c.DriftRate <= 0 {
		c.DriftRate = 0.05
	}
	if c.RandomRate <= 0 {
		c.RandomRate = 0.005
	}
	if c.Strata <= 0 {
		c.Strata = 10
	}
	if c.MaxPerWindow <= 0 {
		c.MaxPerWindow = 50
	}
	if c.DailyBytes <= 0 {
		c.DailyBytes = 16 << 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Selector decides, cell by cell, whether to send it as feedback and why.
// It is safe for concurrent use.
type Selector struct {
	cfg Config
	mu  sync.Mutex
	rng *rand.Rand

	inWindow  int
	perStrat  []int
	day       string
	dayBytes  int64
	skipped   map[string]int
	selected  map[string]int
	driftedOn bool
}

// New returns a selector; its random draws are reproducible from cfg.Seed.
func New(cfg Config) *Selector {
	cfg.defaults()
	return &Selector{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x5eed)), perStrat: make([]int, cfg.Strata),
		skipped: map[string]int{}, selected: map[string]int{}}
}

// StartWindow resets the per-window quotas; drifted says whether the drift
// monitor flagged the window that starts (warning or alarm).
func (s *Selector) StartWindow(drifted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inWindow = 0
	clear(s.perStrat)
	s.driftedOn = drifted
}

// Entropy is the binary entropy of p in bits.
func Entropy(p float64) float64 {
	if p <= 0 || p >= 1 {
		return 0
	}
	return -(p*math.Log2(p) + (1-p)*math.Log2(1-p))
}

// Consider decides for one cell with score p whose crop is cropBytes long.
// It returns the reason (wire.ReasonUncertainty, ReasonDrift or
// ReasonRandom) and true when the cell should be sent.
func (s *Selector) Consider(p float64, cropBytes int) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Draw every random number up front so that the sequence does not
	// depend on which branch is taken (reproducible replays).
	uDrift, uRandom := s.rng.Float64(), s.rng.Float64()
	reason := ""
	switch {
	case math.Abs(p-s.cfg.Threshold) <= s.cfg.Band || Entropy(p) >= s.cfg.MinEntropy:
		reason = wire.ReasonUncertainty
	case s.driftedOn && uDrift < s.cfg.DriftRate:
		reason = wire.ReasonDrift
	case uRandom < s.cfg.RandomRate:
		reason = wire.ReasonRandom
	default:
		return "", false
	}
	if s.inWindow >= s.cfg.MaxPerWindow {
		s.skipped["window_cap"]++
		return "", false
	}
	if reason == wire.ReasonRandom {
		st := min(int(p*float64(s.cfg.Strata)), s.cfg.Strata-1)
		st = max(st, 0)
		if s.perStrat[st] >= max(1, s.cfg.MaxPerWindow/s.cfg.Strata) {
			s.skipped["stratum_cap"]++
			return "", false
		}
		s.perStrat[st]++
	}
	day := s.cfg.Now().UTC().Format(time.DateOnly)
	if day != s.day {
		s.day, s.dayBytes = day, 0
	}
	if s.dayBytes+int64(cropBytes) > s.cfg.DailyBytes {
		s.skipped["daily_bytes"]++
		return "", false
	}
	s.dayBytes += int64(cropBytes)
	s.inWindow++
	s.selected[reason]++
	return reason, true
}

// DayUsage returns the UTC day (YYYY-MM-DD) and the bytes selected on it,
// for saving across restarts.
func (s *Selector) DayUsage() (day string, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.day, s.dayBytes
}

// RestoreDayUsage sets the bytes already selected on day (from DayUsage
// before a restart); a day other than today's is ignored when the next
// cell comes.
func (s *Selector) RestoreDayUsage(day string, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.day, s.dayBytes = day, max(bytes, 0)
}

// Charge corrects the bytes counted against today's budget by delta, once
// the size of what is sent is known (Consider charged an estimate). A day
// can therefore overshoot its budget by the growth of one crop.
func (s *Selector) Charge(delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dayBytes = max(s.dayBytes+int64(delta), 0)
}

// Counts returns how many cells were selected by reason and skipped by
// limit (window_cap, stratum_cap, daily_bytes), for metrics.
func (s *Selector) Counts() (selected, skipped map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	selected, skipped = map[string]int{}, map[string]int{}
	for k, v := range s.selected {
		selected[k] = v
	}
	for k, v := range s.skipped {
		skipped[k] = v
	}
	return selected, skipped
}
