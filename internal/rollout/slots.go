package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/scopewatch/scopewatch/inference"
)

// Names inside a rollout folder.
const (
	SlotA       = "a"
	SlotB       = "b"
	CurrentLink = "current"
	StateFile   = "state.json"
)

var (
	// ErrNotNewer: an offered version is not above the floor, or was
	// rolled back from.
	ErrNotNewer = errors.New("model version not newer than the floor")
	// ErrNoPrevious: a rollback was asked for with no other slot to return
	// to.
	ErrNoPrevious = errors.New("no previous model to roll back to")
	// ErrNoCandidate: Promote was called with nothing staged.
	ErrNoCandidate = errors.New("no staged candidate")
)

// Slot describes the bundle in one slot.
type Slot struct {
	Name           string    `json:"slot"`
	Version        string    `json:"version"`
	ManifestSHA256 string    `json:"manifest_sha256"`
	Since          time.Time `json:"since,omitempty"`
}

// state is state.json.
type state struct {
	Champion Slot  `json:"champion"`
	Previous *Slot `json:"previous,omitempty"`
	// Staged is the candidate written into the other slot, not serving.
	Staged *Slot `json:"staged,omitempty"`
	// Floor is the highest version ever served.
	Floor string `json:"floor"`
	// RolledBack are versions rolled back from: never taken again from an
	// offer.
	RolledBack []string `json:"rolled_back,omitempty"`
}

// Slots is a rollout folder. Its methods are safe for concurrent use.
type Slots struct {
	dir string
	now func() time.Time

	mu sync.Mutex
	st state
}

// Identify reads a bundle folder's version and manifest hash; the caller
// has verified it (signature, hashes, a smoke run) before it reaches a
// slot, and OpenSlots verifies the serving one again.
type Identify func(dir string) (version, manifestSHA256 string, err error)

// OpenSlots opens the rollout folder dir, creating it with initial (a
// bundle folder, copied into slot a) when it holds no model yet. identify
// reads the serving bundle's version, so that the state agrees with the
// link after a crash between the two. now nil is time.Now.
func OpenSlots(dir, initial string, identify Identify, now func() time.Time) (*Slots, error) {
	if now == nil {
		now = time.Now
	}
	s := &Slots{dir: dir, now: now}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	if _, err := os.Readlink(s.Current()); errors.Is(err, os.ErrNotExist) {
		if initial == "" {
			return nil, fmt.Errorf("rollout: %s holds no model and no initial bundle was given", dir)
		}
		if err := copyBundle(initial, s.slotPath(SlotA)); err != nil {
			return nil, fmt.Errorf("rollout: install the initial bundle %s: %w", initial, err)
		}
		if err := s.point(SlotA); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, StateFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(raw, &s.st); err != nil {
			return nil, fmt.Errorf("rollout: %s: %w", filepath.Join(dir, StateFile), err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("rollout: %w", err)
	}
	name, err := s.serving()
	if err != nil {
		return nil, err
	}
	v, sha, err := identify(s.slotPath(name))
	if err != nil {
		return nil, fmt.Errorf("rollout: the serving slot %s: %w", name, err)
	}
	if s.st.Champion.Name != name || s.st.Champion.ManifestSHA256 != sha {
		// The link moved and the state did not follow (a crash between
		// the two writes): the link is the truth.
		prev := s.st.Champion
		s.st.Champion = Slot{Name: name, Version: v, ManifestSHA256: sha, Since: now().UTC()}
		if prev.Name != "" && prev.Name != name {
			s.st.Previous = &prev
		}
		s.st.Staged = nil
	}
	if s.st.Staged != nil && s.st.Staged.Name == name {
		s.st.Staged = nil
	}
	if err := s.raiseFloor(v); err != nil {
		return nil, err
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	return s, nil
}

// Current is the pointer's path, the daemon's model.path.
func (s *Slots) Current() string { return filepath.Join(s.dir, CurrentLink) }

func (s *Slots) slotPath(name string) string { return filepath.Join(s.dir, name) }

// Champion is the serving slot.
func (s *Slots) Champion() Slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Champion
}

// Previous is the slot a rollback returns to, nil when there is none.
func (s *Slots) Previous() *Slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.Previous == nil {
		return nil
	}
	p := *s.st.Previous
	return &p
}

// Floor is the highest version the device has served.
func (s *Slots) Floor() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Floor
}

// Admit says whether an offered version may be taken: above the floor and
// never rolled back from.
func (s *Slots) Admit(version string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.st.RolledBack, version) {
		return fmt.Errorf("%w: %s was rolled back from on this device", ErrNotNewer, version)
	}
	if s.st.Floor == "" {
		return nil
	}
	c, err := inference.CompareVersions(version, s.st.Floor)
	if err != nil {
		return fmt.Errorf("rollout: offered version %s: %w", version, err)
	}
	if c <= 0 {
		return fmt.Errorf("%w: offered %s, the device has served %s", ErrNotNewer, version, s.st.Floor)
	}
	return nil
}

// Stage copies a verified bundle folder into the slot that does not serve
// and returns its path: the candidate's own folder, which it can be loaded
// from beside the champion. The serving slot is never touched.
func (s *Slots) Stage(src string, version, manifestSHA256 string) (string, error) {
	if err := s.Admit(version); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	other := s.other(s.st.Champion.Name)
	// The previous model is overwritten: from here the rollback target is
	// gone until the candidate is refused or promoted.
	s.st.Previous, s.st.Staged = nil, nil
	if err := s.save(); err != nil {
		return "", err
	}
	if err := copyBundle(src, s.slotPath(other)); err != nil {
		return "", fmt.Errorf("rollout: stage %s: %w", version, err)
	}
	s.st.Staged = &Slot{Name: other, Version: version, ManifestSHA256: manifestSHA256, Since: s.now().UTC()}
	if err := s.save(); err != nil {
		return "", err
	}
	return s.slotPath(other), nil
}

// Staged is the candidate in the other slot, nil when there is none.
func (s *Slots) Staged() *Slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.Staged == nil {
		return nil
	}
	c := *s.st.Staged
	return &c
}

// Discard forgets a refused candidate (its files stay until the next
// Stage overwrites them).
func (s *Slots) Discard() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Staged = nil
	return s.save()
}

// Promote makes the staged candidate serve: one rename of the pointer.
// The champion becomes the previous slot, the rollback target, and the
// floor rises to the candidate's version.
func (s *Slots) Promote() (Slot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.st.Staged
	if c == nil {
		return Slot{}, ErrNoCandidate
	}
	if err := s.point(c.Name); err != nil {
		return Slot{}, err
	}
	prev := s.st.Champion
	s.st.Champion, s.st.Previous, s.st.Staged = *c, &prev, nil
	s.st.Champion.Since = s.now().UTC()
	if err := s.raiseFloor(c.Version); err != nil {
		return Slot{}, err
	}
	return s.st.Champion, s.save()
}

// Rollback makes the previous slot serve again, and keeps the version it
// leaves from ever being taken again from an offer.
func (s *Slots) Rollback() (Slot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.st.Previous
	if p == nil {
		return Slot{}, ErrNoPrevious
	}
	if err := s.point(p.Name); err != nil {
		return Slot{}, err
	}
	left := s.st.Champion
	s.st.Champion, s.st.Previous, s.st.Staged = *p, &left, nil
	s.st.Champion.Since = s.now().UTC()
	if !slices.Contains(s.st.RolledBack, left.Version) {
		s.st.RolledBack = append(s.st.RolledBack, left.Version)
	}
	return s.st.Champion, s.save()
}

func (s *Slots) other(name string) string {
	if name == SlotA {
		return SlotB
	}
	return SlotA
}

// serving reads which slot the pointer names.
func (s *Slots) serving() (string, error) {
	t, err := os.Readlink(s.Current())
	if err != nil {
		return "", fmt.Errorf("rollout: %w", err)
	}
	if t != SlotA && t != SlotB {
		return "", fmt.Errorf("rollout: %s points to %q, want %q or %q", s.Current(), t, SlotA, SlotB)
	}
	return t, nil
}

// point switches the pointer to slot name: a new link renamed over the
// old one, then the folder synced so that the rename is on disk.
func (s *Slots) point(name string) error {
	tmp := s.Current() + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(name, tmp); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if err := os.Rename(tmp, s.Current()); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	return syncDir(s.dir)
}

func (s *Slots) raiseFloor(v string) error {
	if s.st.Floor == "" {
		s.st.Floor = v
		return nil
	}
	c, err := inference.CompareVersions(v, s.st.Floor)
	if err != nil {
		return fmt.Errorf("rollout: version %s against the floor %s: %w", v, s.st.Floor, err)
	}
	if c > 0 {
		s.st.Floor = v
	}
	return nil
}

func (s *Slots) save() error {
	j, err := json.MarshalIndent(s.st, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(s.dir, StateFile)
	if err := writeSynced(path+".tmp", j); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	return syncDir(s.dir)
}

// copyBundle copies the regular files of bundle folder src into dst
// through dst.tmp, every file and both folders synced, so that dst is
// either absent or complete.
func copyBundle(src, dst string) error {
	tmp := dst + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			return fmt.Errorf("%s: %s is not a regular file; a bundle holds files only", src, e.Name())
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(tmp, e.Name())); err != nil {
			return err
		}
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
