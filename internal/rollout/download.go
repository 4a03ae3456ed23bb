package rollout

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/scopewatch/scopewatch/feedback/wire"
)

// ErrOfferTooLarge: an offer's archive is above the device's bound.
var ErrOfferTooLarge = errors.New("offered model too large")

// DefaultMaxArchive bounds an offered archive (a MobileNetV3-Small bundle
// is about 7 MB).
const DefaultMaxArchive = 64 << 20

// Files inside a download's folder.
const (
	offerFile   = "offer.json"
	archiveFile = "bundle.tar"
	chunkSuffix = ".chunk"
)

// Download is one offered archive arriving chunk by chunk into its own
// folder on disk: each chunk is written as it comes (memory holds one), so
// a restart continues with the chunks already there, and the archive is
// assembled by streaming them through sha256. It is not safe for
// concurrent use.
type Download struct {
	dir   string
	offer wire.ModelOffer
	have  []bool
	n     int
}

// StartDownload opens (or resumes) the download of offer o under root
// (one folder per version). A folder holding another archive of the same
// version (another sha256) is emptied first.
func StartDownload(root string, o wire.ModelOffer, maxSize int64) (*Download, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("rollout: offer: %w", err)
	}
	if maxSize <= 0 {
		maxSize = DefaultMaxArchive
	}
	if o.Size > maxSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, this device takes at most %d", ErrOfferTooLarge, o.Version, o.Size, maxSize)
	}
	d := &Download{dir: filepath.Join(root, o.Version), offer: o, have: make([]bool, o.Chunks)}
	raw, err := os.ReadFile(filepath.Join(d.dir, offerFile))
	if err == nil {
		var old wire.ModelOffer
		if json.Unmarshal(raw, &old) != nil || old.SHA256 != o.SHA256 || old.Size != o.Size || old.Chunks != o.Chunks {
			if err := os.RemoveAll(d.dir); err != nil {
				return nil, fmt.Errorf("rollout: %w", err)
			}
		}
	}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	j, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	if err := writeSynced(filepath.Join(d.dir, offerFile), j); err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		var i int
		if !strings.HasSuffix(name, chunkSuffix) {
			continue
		}
		if _, err := fmt.Sscanf(name, "%d"+chunkSuffix, &i); err != nil || i < 0 || i >= o.Chunks || name != chunkName(i) {
			os.Remove(filepath.Join(d.dir, name))
			continue
		}
		if fi, err := e.Info(); err == nil && fi.Size() == int64(d.chunkLen(i)) {
			d.have[i] = true
			d.n++
		}
	}
	return d, nil
}

func chunkName(i int) string { return fmt.Sprintf("%05d%s", i, chunkSuffix) }

// chunkLen is how many bytes chunk i of the offer carries.
func (d *Download) chunkLen(i int) int {
	if i < d.offer.Chunks-1 {
		return d.offer.ChunkSize
	}
	return int(d.offer.Size) - (d.offer.Chunks-1)*d.offer.ChunkSize
}

// Offer is the offer being downloaded.
func (d *Download) Offer() wire.ModelOffer { return d.offer }

// Have and Missing count the chunks on disk and still to come.
func (d *Download) Have() int    { return d.n }
func (d *Download) Missing() int { return d.offer.Chunks - d.n }

// Add writes one chunk. A chunk of another archive, or of the wrong length,
// is an error and is not written; one already on disk is skipped.
func (d *Download) Add(c wire.ModelChunk) error {
	o := d.offer
	if c.Version != o.Version || c.Count != o.Chunks || c.SHA256 != o.SHA256 {
		return fmt.Errorf("%w: chunk %d of %s (%d chunks, sha256 %.12s) does not belong to the offer of %s (%d chunks, sha256 %.12s)",
			wire.ErrInvalid, c.Index, c.Version, c.Count, c.SHA256, o.Version, o.Chunks, o.SHA256)
	}
	if c.Index < 0 || c.Index >= o.Chunks || len(c.Data) != d.chunkLen(c.Index) {
		return fmt.Errorf("%w: chunk %d of %s has %d bytes, want %d", wire.ErrInvalid, c.Index, o.Version, len(c.Data), d.chunkLen(max(0, min(c.Index, o.Chunks-1))))
	}
	if d.have[c.Index] {
		return nil
	}
	path := filepath.Join(d.dir, chunkName(c.Index))
	if err := writeSynced(path+".tmp", c.Data); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	d.have[c.Index] = true
	d.n++
	return nil
}

// Assemble streams the chunks into the archive and checks its size and
// sha256 against the offer. On a mismatch every chunk is deleted (which
// one is wrong cannot be told) and the error wraps wire.ErrBadHash. The
// chunks are removed once the archive is whole.
func (d *Download) Assemble() (string, error) {
	if d.Missing() > 0 {
		return "", fmt.Errorf("rollout: %s: %d of %d chunks missing", d.offer.Version, d.Missing(), d.offer.Chunks)
	}
	path := filepath.Join(d.dir, archiveFile)
	out, err := os.OpenFile(path+".tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return "", fmt.Errorf("rollout: %w", err)
	}
	h := sha256.New()
	w := io.MultiWriter(out, h)
	var n int64
	for i := range d.offer.Chunks {
		in, err := os.Open(filepath.Join(d.dir, chunkName(i)))
		if err != nil {
			out.Close()
			return "", fmt.Errorf("rollout: %w", err)
		}
		k, err := io.Copy(w, in)
		in.Close()
		n += k
		if err != nil {
			out.Close()
			return "", fmt.Errorf("rollout: %w", err)
		}
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return "", fmt.Errorf("rollout: %w", err)
	}
	out.Close()
	if sum := hex.EncodeToString(h.Sum(nil)); n != d.offer.Size || sum != d.offer.SHA256 {
		d.clear()
		return "", fmt.Errorf("%w: %s: assembled %d bytes with sha256 %s, the offer says %d bytes, %s; every chunk is fetched again",
			wire.ErrBadHash, d.offer.Version, n, sum, d.offer.Size, d.offer.SHA256)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return "", fmt.Errorf("rollout: %w", err)
	}
	for i := range d.offer.Chunks {
		os.Remove(filepath.Join(d.dir, chunkName(i)))
	}
	return path, nil
}

func (d *Download) clear() {
	for i := range d.have {
		os.Remove(filepath.Join(d.dir, chunkName(i)))
		d.have[i] = false
	}
	os.Remove(filepath.Join(d.dir, archiveFile+".tmp"))
	d.n = 0
}

// Remove deletes the download's folder.
func (d *Download) Remove() error { return os.RemoveAll(d.dir) }
