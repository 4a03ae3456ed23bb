package daemon

import (
	"context"
	"sync"
)

// swappableModel lets SIGHUP replace the model while images are being
// analysed: Analyze holds a read lock, so the swap waits for in-flight
// images and the old model is closed only when nothing uses it.
type swappableModel struct {
	mu  sync.RWMutex
	cur analyzer
}

var _ analyzer = (*swappableModel)(nil)

// identified is implemented by analyzers that can tell whether two loads
// are the same bundle (the manifest's sha256).
type identified interface{ Identity() string }

func identity(a analyzer) string {
	if i, ok := a.(identified); ok {
		return i.Identity()
	}
	return a.ModelVersion()
}

func (s *swappableModel) Analyze(ctx context.Context, data []byte, kind string) (analysis, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur.Analyze(ctx, data, kind)
}

func (s *swappableModel) ModelVersion() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur.ModelVersion()
}

func (s *swappableModel) SetThreshold(t float64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.cur.SetThreshold(t)
}

// baseline returns the serving model's version and baseline.json path
// ("" when its bundle has none).
func (s *swappableModel) baseline() (version, path string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if b, ok := s.cur.(baselineSource); ok {
		path = b.BaselinePath()
	}
	return s.cur.ModelVersion(), path
}

// threshold is the serving model's decision threshold, 0 when it does not
// say.
func (s *swappableModel) threshold() float64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if t, ok := s.cur.(thresholded); ok {
		return t.Threshold()
	}
	return 0
}

// measuresFocus reports whether the serving model measures each crop's
// focus (the drift monitor's focus detector needs it).
func (s *swappableModel) measuresFocus() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fs, ok := s.cur.(focusSource)
	return ok && fs.MeasuresFocus()
}

func (s *swappableModel) identity() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return identity(s.cur)
}

// swap installs next and closes the previous model once no image uses it.
func (s *swappableModel) swap(next analyzer) error {
	s.mu.Lock()
	old := s.cur
	s.cur = next
	s.mu.Unlock()
	return old.Close()
}

func (s *swappableModel) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.Close()
}

// gated reports whether the serving model's plausibility gate has a
// reference.
func (s *swappableModel) gated() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return gated(s.cur)
}
