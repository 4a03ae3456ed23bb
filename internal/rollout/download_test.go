package rollout

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/inference"
)

// packedOffer packs a bundle as the tuning worker does and cuts it into
// the offer's chunks.
func packedOffer(t testing.TB, dir string) (wire.ModelOffer, []wire.ModelChunk) {
	t.Helper()
	b, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: trusted(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var archive bytes.Buffer
	if err := inference.PackBundle(b, &archive); err != nil {
		t.Fatal(err)
	}
	o := wire.ModelOffer{Site: "lab-1", Name: b.Manifest.Name, Version: b.Manifest.Version, Incumbent: "2026.11.28-2",
		ManifestSHA256: b.ManifestSHA256, Signer: "test", Created: time.Now().UTC()}
	payloads, err := wire.SplitModel(&o, archive.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	chunks := make([]wire.ModelChunk, len(payloads))
	for i, p := range payloads {
		if chunks[i], err = wire.DecodeModelChunk(p); err != nil {
			t.Fatal(err)
		}
	}
	return o, chunks
}

// TestDownloadResumesAndVerifies: chunks arrive in any order over two
// "runs" (the second resumes from the chunks on disk); the assembled
// archive is the offered one and opens as a verified bundle; the chunks
// are gone afterwards.
func TestDownloadResumesAndVerifies(t *testing.T) {
	v := "2026.12.03-1_abcd"
	o, chunks := packedOffer(t, newerBundle(t, v))
	if o.Chunks < 10 {
		t.Fatalf("only %d chunks: the test wants a multi-chunk archive", o.Chunks)
	}
	root := t.TempDir()
	order := rand.New(rand.NewPCG(3, 4)).Perm(len(chunks))
	d, err := StartDownload(root, o, 0)
	if err != nil {
		t.Fatal(err)
	}
	half := order[:len(order)/2]
	for _, i := range half {
		if err := d.Add(chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Assemble(); err == nil {
		t.Fatal("assembled with chunks missing")
	}
	d, err = StartDownload(root, o, 0) // a restart
	if err != nil {
		t.Fatal(err)
	}
	if d.Have() != len(half) {
		t.Fatalf("resumed with %d chunks on disk, want %d", d.Have(), len(half))
	}
	for _, i := range order { // the broker sends the retained chunks again
		if err := d.Add(chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	path, err := d.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	b, err := inference.OpenBundle(path, inference.BundleOptions{TrustedKeys: trusted(t), TempDir: t.TempDir()})
	if err != nil {
		t.Fatalf("assembled archive: %v", err)
	}
	defer b.Close()
	if b.Manifest.Version != v || b.ManifestSHA256 != o.ManifestSHA256 {
		t.Fatalf("assembled %s %s, offered %s %s", b.Manifest.Version, b.ManifestSHA256, v, o.ManifestSHA256)
	}
	left, _ := filepath.Glob(filepath.Join(root, v, "*"+chunkSuffix))
	if len(left) != 0 {
		t.Fatalf("%d chunks left on disk", len(left))
	}
}

// TestDownloadRefuses: what does not belong to the offer is refused and
// not written; a corrupted chunk fails the whole archive's hash and every
// chunk is fetched again; an archive above the bound is not started.
func TestDownloadRefuses(t *testing.T) {
	o, chunks := packedOffer(t, newerBundle(t, "2026.12.03-1_abcd"))
	other, otherChunks := packedOffer(t, newerBundle(t, "2026.12.04-1_abcd"))
	root := t.TempDir()
	if _, err := StartDownload(root, o, o.Size-1); !errors.Is(err, ErrOfferTooLarge) {
		t.Fatalf("an archive above the bound: %v", err)
	}
	d, err := StartDownload(root, o, 0)
	if err != nil {
		t.Fatal(err)
	}
	short := chunks[0]
	short.Data = short.Data[:10]
	for name, c := range map[string]wire.ModelChunk{
		"a chunk of another offer": otherChunks[0],
		"a short chunk":            short,
	} {
		if err := d.Add(c); !errors.Is(err, wire.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if d.Have() != 0 {
		t.Fatalf("%d refused chunks were written", d.Have())
	}
	for i, c := range chunks {
		if i == 3 {
			c.Data = append([]byte(nil), c.Data...)
			c.Data[100] ^= 1
		}
		if err := d.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Assemble(); !errors.Is(err, wire.ErrBadHash) {
		t.Fatalf("a flipped bit: %v, want ErrBadHash", err)
	}
	if d.Have() != 0 {
		t.Fatalf("%d chunks kept after a bad hash", d.Have())
	}
	// The same version offered with another archive starts afresh.
	if err := d.Add(chunks[0]); err != nil {
		t.Fatal(err)
	}
	o2 := other
	o2.Version = o.Version
	if _, err := StartDownload(root, o2, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, o.Version, chunkName(0))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a chunk of the earlier archive survived a different offer of the same version: %v", err)
	}
}

// BenchmarkDownload is the device's work for one offered bundle (the
// shipped one, packed: every chunk decoded from its message, written and
// synced, then assembled through sha256), to set against classification's ~1 ms of CPU per
// image: the download runs beside the workers and must not slow them.
func BenchmarkDownload(b *testing.B) {
	testPriv = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	testPub = testPriv.Public().(ed25519.PublicKey)
	o, chunks := packedOffer(b, defaultBundle())
	payloads := make([][]byte, len(chunks))
	for i, c := range chunks {
		payloads[i], _ = json.Marshal(c)
	}
	b.SetBytes(o.Size)
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	for b.Loop() {
		root := b.TempDir()
		d, err := StartDownload(root, o, 0)
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range payloads {
			c, err := wire.DecodeModelChunk(p) // as the taker gets it
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Add(c); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := d.Assemble(); err != nil {
			b.Fatal(err)
		}
	}
	// CPU, not wall time: the fsyncs wait on the disk without using a
	// core the workers need.
	b.ReportMetric(float64(cpu()-start)/float64(b.N)/1e6, "cpu-ms/op")
}
