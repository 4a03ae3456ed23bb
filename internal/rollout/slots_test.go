package rollout

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/inference"
)

// The tests use the shipped default bundle and copies of it re-sealed
// with a test key under newer versions: real bundles, really verified.

var (
	testPub  ed25519.PublicKey
	testPriv ed25519.PrivateKey
)

func defaultBundle() string {
	p, _ := filepath.Abs(filepath.Join("..", "..", "models", "default"))
	return p
}

func trusted(t testing.TB) []ed25519.PublicKey {
	t.Helper()
	keys, err := inference.LoadPublicKeys(filepath.Join("..", "..", "models", "keys"))
	if err != nil {
		t.Fatal(err)
	}
	return append(keys, testPub)
}

// identify verifies a bundle folder as a device does before it serves.
func identify(keys []ed25519.PublicKey) Identify {
	return func(dir string) (string, string, error) {
		b, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: keys})
		if err != nil {
			return "", "", err
		}
		defer b.Close()
		return b.Manifest.Version, b.ManifestSHA256, nil
	}
}

// newerBundle writes a copy of the default bundle with version v, sealed
// with the test key.
func newerBundle(t testing.TB, v string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), v)
	if err := copyBundle(defaultBundle(), dir); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, inference.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m["version"] = v
	raw, _ = json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, inference.ManifestFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := inference.SealBundle(dir, testPriv); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestMain(m *testing.M) {
	var err error
	// A fixed key, so that the crash test's child process seals and
	// verifies with the same one.
	testPriv = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	testPub = testPriv.Public().(ed25519.PublicKey)
	if dir := os.Getenv("ROLLOUT_CHILD_DIR"); dir != "" {
		err = childPromotions(dir, os.Getenv("ROLLOUT_CHILD_SRC"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func openTestSlots(t *testing.T, dir string) *Slots {
	t.Helper()
	s, err := OpenSlots(dir, defaultBundle(), identify(trusted(t)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func servingVersion(t *testing.T, s *Slots) string {
	t.Helper()
	v, _, err := identify(trusted(t))(s.Current())
	if err != nil {
		t.Fatalf("the serving bundle does not verify: %v", err)
	}
	return v
}

// TestSlotsPromoteAndRollback: a staged candidate does not serve until
// promoted; promotion and rollback switch the pointer; the floor refuses
// an offer that is not newer, and the version rolled back from stays
// refused; all of it survives a reopen.
func TestSlotsPromoteAndRollback(t *testing.T) {
	dir := t.TempDir()
	s := openTestSlots(t, dir)
	inc := servingVersion(t, s)
	if s.Champion().Version != inc || s.Floor() != inc || s.Previous() != nil {
		t.Fatalf("initial state: champion %+v floor %s previous %v", s.Champion(), s.Floor(), s.Previous())
	}
	if _, err := s.Promote(); !errors.Is(err, ErrNoCandidate) {
		t.Fatalf("promote with nothing staged: %v", err)
	}
	if _, err := s.Rollback(); !errors.Is(err, ErrNoPrevious) {
		t.Fatalf("rollback with no previous: %v", err)
	}
	for _, v := range []string{inc, "2026.11.01-1"} {
		if err := s.Admit(v); !errors.Is(err, ErrNotNewer) {
			t.Errorf("admit %s with floor %s: %v", v, inc, err)
		}
	}

	next := "2026.12.03-1_abcd"
	src := newerBundle(t, next)
	path, err := s.Stage(src, next, "sha-of-"+next)
	if err != nil {
		t.Fatal(err)
	}
	if v, _, err := identify(trusted(t))(path); err != nil || v != next {
		t.Fatalf("staged slot: %s %v", v, err)
	}
	if servingVersion(t, s) != inc {
		t.Fatal("staging changed what serves")
	}
	if _, err := s.Promote(); err != nil {
		t.Fatal(err)
	}
	if servingVersion(t, s) != next || s.Floor() != next || s.Previous() == nil || s.Previous().Version != inc {
		t.Fatalf("after promotion: serving %s floor %s previous %+v", servingVersion(t, s), s.Floor(), s.Previous())
	}

	s = openTestSlots(t, dir) // the state is on disk
	if _, err := s.Rollback(); err != nil {
		t.Fatal(err)
	}
	if servingVersion(t, s) != inc || s.Floor() != next {
		t.Fatalf("after rollback: serving %s floor %s", servingVersion(t, s), s.Floor())
	}
	s = openTestSlots(t, dir)
	if err := s.Admit(next); !errors.Is(err, ErrNotNewer) {
		t.Fatalf("the version rolled back from was admitted again: %v", err)
	}
	if err := s.Admit("2026.12.04-1_ef01"); err != nil {
		t.Fatalf("a newer version: %v", err)
	}
}

// TestSlotsSurviveKill: a process staging and promoting bundles in a loop
// is SIGKILLed at random moments; after each kill the pointer names a
// complete, verifying bundle of one of the versions, and the state agrees
// with it.
func TestSlotsSurviveKill(t *testing.T) {
	dir := t.TempDir()
	openTestSlots(t, dir)
	src := filepath.Join(t.TempDir(), "src")
	// Versions the child cycles through: one folder per version.
	for i := range 3 {
		v := fmt.Sprintf("2026.12.%02d-1_aa", 10+i)
		if err := copyBundle(newerBundle(t, v), filepath.Join(src, v)); err != nil {
			t.Fatal(err)
		}
	}
	self, _ := os.Executable()
	rng := rand.New(rand.NewPCG(1, 2))
	seen := map[string]bool{}
	for round := range 12 {
		cmd := exec.Command(self, "-test.run=^$")
		cmd.Env = append(os.Environ(), "ROLLOUT_CHILD_DIR="+dir, "ROLLOUT_CHILD_SRC="+src)
		out, _ := os.CreateTemp(t.TempDir(), "child")
		cmd.Stderr = out
		progress, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The kill lands at a random moment after the child's first
		// promotion, whatever the machine's load makes its start cost.
		line := make([]byte, 1)
		if _, err := progress.Read(line); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			raw, _ := os.ReadFile(out.Name())
			t.Fatalf("round %d: the child never promoted: %v\n%s", round, err, raw)
		}
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		s, err := OpenSlots(dir, "", identify(trusted(t)), nil)
		if err != nil {
			raw, _ := os.ReadFile(out.Name())
			t.Fatalf("round %d: reopen after SIGKILL: %v\nchild:\n%s", round, err, raw)
		}
		v := servingVersion(t, s)
		if s.Champion().Version != v {
			t.Fatalf("round %d: state says %s serves, the pointer's bundle is %s", round, s.Champion().Version, v)
		}
		seen[v] = true
	}
	if len(seen) < 2 {
		t.Fatalf("the kills never landed after a promotion (serving: %v); the test proves nothing", seen)
	}
}

// childPromotions stages and promotes the versions under src in turn,
// forever, ignoring the floor (each stage is the next in the cycle, so it
// forgets the floor by reopening with a fresh state file).
func childPromotions(dir, src string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	keys, err := inference.LoadPublicKeys(filepath.Join("..", "..", "models", "keys"))
	if err != nil {
		return err
	}
	keys = append(keys, testPub)
	for i := 0; ; i++ {
		s, err := OpenSlots(dir, "", identify(keys), nil)
		if err != nil {
			return err
		}
		v := entries[i%len(entries)].Name()
		// The cycle goes back to older versions; the floor is lifted by
		// hand here, as only a test may.
		s.st.Floor, s.st.RolledBack = "", nil
		if _, err := s.Stage(filepath.Join(src, v), v, strconv.Itoa(i)); err != nil {
			return err
		}
		if _, err := s.Promote(); err != nil {
			return err
		}
		os.Stdout.Write([]byte{'.'})
	}
}
