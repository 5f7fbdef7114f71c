/* mk_report_plot.c - figures with cairo (see mk_report_plot.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_report_plot.h"

#include <cairo-svg.h>
#include <cairo.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_error.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

typedef void (*draw_fn)(cairo_t *cr, const void *ctx);

/* Draw once into a PNG image surface and once into an SVG surface. */
static int render(const char *base, draw_fn draw, const void *ctx)
{
    char path[4096];
    for (int svg = 0; svg < 2; svg++) {
        snprintf(path, sizeof path, "%s.%s", base, svg ? "svg" : "png");
        cairo_surface_t *s = svg ? cairo_svg_surface_create(path, MK_PLOT_W, MK_PLOT_H)
                                 : cairo_image_surface_create(CAIRO_FORMAT_ARGB32, MK_PLOT_W, MK_PLOT_H);
        cairo_t *cr = cairo_create(s);
        cairo_set_source_rgb(cr, 1, 1, 1);
        cairo_paint(cr);
        cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
        draw(cr, ctx);
        cairo_status_t st = cairo_status(cr);
        cairo_destroy(cr);
        if (st == CAIRO_STATUS_SUCCESS && !svg) st = cairo_surface_write_to_png(s, path);
        cairo_surface_finish(s);
        if (st == CAIRO_STATUS_SUCCESS) st = cairo_surface_status(s);
        cairo_surface_destroy(s);
        if (st != CAIRO_STATUS_SUCCESS)
            return MK_FAIL(MK_ERR_IO, "%s: cannot write figure: %s", path, cairo_status_to_string(st));
    }
    return MK_OK;
}

static void text(cairo_t *cr, double x, double y, double size, double align, const char *s, int vertical)
{
    cairo_text_extents_t ext;
    cairo_set_font_size(cr, size);
    cairo_text_extents(cr, s, &ext);
    cairo_save(cr);
    cairo_move_to(cr, x, y);
    if (vertical) cairo_rotate(cr, -M_PI / 2);
    cairo_rel_move_to(cr, -align * ext.x_advance, 0);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_show_text(cr, s);
    cairo_restore(cr);
}

static double nice_step(double range, int target)
{
    double raw = range / target, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

static void fmt_num(char *b, size_t n, double v)
{
    if (fabs(v) < 1e-12) v = 0;
    snprintf(b, n, "%.4g", v);
}

/* Axes frame with y ticks (and x ticks when xmax > xmin); returns nothing. */
static void axes(cairo_t *cr, double x0, double y0, double w, double h, double xmin, double xmax,
                 double ymin, double ymax, int xticks)
{
    char b[32];
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, x0, y0, w, h);
    cairo_stroke(cr);
    double st = nice_step(ymax - ymin, 5);
    for (double v = ceil(ymin / st) * st; v <= ymax + 1e-9 * st; v += st) {
        double y = y0 + h - (v - ymin) / (ymax - ymin) * h;
        cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
        cairo_move_to(cr, x0, y); cairo_line_to(cr, x0 + w, y); cairo_stroke(cr);
        fmt_num(b, sizeof b, v);
        text(cr, x0 - 4, y + 4, 10, 1, b, 0);
    }
    if (xticks && xmax > xmin) {
        double sx = nice_step(xmax - xmin, 4);
        for (double v = ceil(xmin / sx) * sx; v <= xmax + 1e-9 * sx; v += sx) {
            double x = x0 + (v - xmin) / (xmax - xmin) * w;
            cairo_set_source_rgb(cr, 0, 0, 0);
            cairo_move_to(cr, x, y0 + h); cairo_line_to(cr, x, y0 + h + 4); cairo_stroke(cr);
            fmt_num(b, sizeof b, v);
            text(cr, x, y0 + h + 16, 10, 0.5, b, 0);
        }
    }
}

static const double palette[10][3] = {
    { 0.12, 0.47, 0.71 }, { 1.00, 0.50, 0.05 }, { 0.17, 0.63, 0.17 }, { 0.84, 0.15, 0.16 },
    { 0.58, 0.40, 0.74 }, { 0.55, 0.34, 0.29 }, { 0.89, 0.47, 0.76 }, { 0.50, 0.50, 0.50 },
    { 0.74, 0.74, 0.13 }, { 0.09, 0.75, 0.81 },
};

/* ------------------------------------------------------------------ lines */
typedef struct {
    const char *title, *xlabel, *ylabel;
    int np;
    const mk_line_panel *p;
} lines_ctx;

static void draw_lines(cairo_t *cr, const void *vctx)
{
    const lines_ctx *c = vctx;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int i = 0; i < c->np; i++)
        for (int j = 0; j < c->p[i].nlines; j++)
            for (int k = 0; k < c->p[i].lines[j].n; k++) {
                double x = c->p[i].lines[j].x[k], y = c->p[i].lines[j].y[k];
                if (!isfinite(y)) continue;
                xmin = fmin(xmin, x); xmax = fmax(xmax, x); ymin = fmin(ymin, y); ymax = fmax(ymax, y);
            }
    text(cr, MK_PLOT_W / 2.0, 24, 16, 0.5, c->title, 0);
    if (!isfinite(ymin)) { text(cr, MK_PLOT_W / 2.0, MK_PLOT_H / 2.0, 14, 0.5, "no data", 0); return; }
    if (ymax - ymin < 1e-12) { ymin -= 0.5; ymax += 0.5; }
    double pad = 0.05 * (ymax - ymin);
    ymin -= pad; ymax += pad;
    if (xmax <= xmin) { xmin -= 1; xmax += 1; }
    double left = 70, right = 20, gap = 50, top = 60, bottom = 110;
    double w = (MK_PLOT_W - left - right - gap * (c->np - 1)) / c->np, h = MK_PLOT_H - top - bottom;
    for (int i = 0; i < c->np; i++) {
        double x0 = left + i * (w + gap);
        axes(cr, x0, top, w, h, xmin, xmax, ymin, ymax, 1);
        text(cr, x0 + w / 2, top - 8, 12, 0.5, c->p[i].title, 0);
        text(cr, x0 + w / 2, top + h + 34, 11, 0.5, c->xlabel, 0);
        if (i == 0) text(cr, 18, top + h / 2, 11, 0.5, c->ylabel, 1);
        cairo_save(cr);
        cairo_rectangle(cr, x0, top, w, h);
        cairo_clip(cr);
        cairo_set_line_width(cr, 1.8);
        for (int j = 0; j < c->p[i].nlines; j++) {
            const mk_line *ln = &c->p[i].lines[j];
            const double *col = palette[j % 10];
            cairo_set_source_rgb(cr, col[0], col[1], col[2]);
            int pen = 0;
            for (int k = 0; k < ln->n; k++) {
                if (!isfinite(ln->y[k])) { pen = 0; continue; }
                double x = x0 + (ln->x[k] - xmin) / (xmax - xmin) * w;
                double y = top + h - (ln->y[k] - ymin) / (ymax - ymin) * h;
                if (pen) cairo_line_to(cr, x, y); else cairo_move_to(cr, x, y);
                if (ln->n == 1) { cairo_arc(cr, x, y, 3, 0, 2 * M_PI); cairo_fill(cr); }
                pen = 1;
            }
            cairo_stroke(cr);
        }
        cairo_restore(cr);
        /* legend under the panel */
        for (int j = 0; j < c->p[i].nlines && j < 8; j++) {
            const double *col = palette[j % 10];
            double lx = x0 + (j % 4) * (w / 4), ly = top + h + 56 + (j / 4) * 16;
            cairo_set_source_rgb(cr, col[0], col[1], col[2]);
            cairo_rectangle(cr, lx, ly - 8, 14, 8);
            cairo_fill(cr);
            text(cr, lx + 18, ly, 10, 0, c->p[i].lines[j].label, 0);
        }
    }
}

int mk_plot_lines(const char *base, const char *title, const char *xlabel, const char *ylabel,
                  int npanels, const mk_line_panel *panels)
{
    lines_ctx c = { title, xlabel, ylabel, npanels, panels };
    return render(base, draw_lines, &c);
}

/* ------------------------------------------------------------------ heatmap */
static void viridis(double t, double *rgb)
{
    static const double k[5][3] = { { 0.267, 0.005, 0.329 }, { 0.230, 0.322, 0.546 }, { 0.128, 0.567, 0.551 },
                                    { 0.369, 0.789, 0.383 }, { 0.993, 0.906, 0.144 } };
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double f = t * 4;
    int i = (int)f;
    if (i >= 4) i = 3;
    f -= i;
    for (int j = 0; j < 3; j++) rgb[j] = k[i][j] + f * (k[i + 1][j] - k[i][j]);
}

typedef struct {
    const char *title;
    int np;
    const mk_heat_panel *p;
    double vmax, ref;
} heat_ctx;

static void draw_heat(cairo_t *cr, const void *vctx)
{
    const heat_ctx *c = vctx;
    char b[32];
    text(cr, MK_PLOT_W / 2.0, 24, 16, 0.5, c->title, 0);
    double left = 90, right = 90, gap = 100, top = 60, bottom = 60;
    double w = (MK_PLOT_W - left - right - gap * (c->np - 1)) / c->np, h = MK_PLOT_H - top - bottom;
    for (int i = 0; i < c->np; i++) {
        const mk_heat_panel *p = &c->p[i];
        double x0 = left + i * (w + gap), cw = w / p->cols, ch = h / p->rows;
        text(cr, x0 + w / 2, top - 8, 12, 0.5, p->title, 0);
        for (int r = 0; r < p->rows; r++) {
            for (int e = 0; e < p->cols; e++) {
                double rgb[3];
                viridis(c->vmax > 0 ? p->v[r * p->cols + e] / c->vmax : 0, rgb);
                cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
                cairo_rectangle(cr, x0 + e * cw, top + r * ch, cw + 0.5, ch + 0.5);
                cairo_fill(cr);
            }
            text(cr, x0 - 4, top + (r + 0.5) * ch + 4, 11, 1, p->row_labels[r], 0);
        }
        int every = p->cols > 16 ? (p->cols + 15) / 16 : 1;
        for (int e = 0; e < p->cols; e += every) {
            snprintf(b, sizeof b, "%d", e);
            text(cr, x0 + (e + 0.5) * cw, top + h + 14, 9, 0.5, b, 0);
        }
        text(cr, x0 + w / 2, top + h + 34, 11, 0.5, "expert", 0);
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_set_line_width(cr, 1);
        cairo_rectangle(cr, x0, top, w, h);
        cairo_stroke(cr);
    }
    /* color bar */
    double bx = MK_PLOT_W - right + 25, bw = 16;
    for (int k = 0; k < 100; k++) {
        double rgb[3];
        viridis((k + 0.5) / 100, rgb);
        cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
        cairo_rectangle(cr, bx, top + h - (k + 1) * h / 100, bw, h / 100 + 0.5);
        cairo_fill(cr);
    }
    for (int k = 0; k <= 4; k++) {
        fmt_num(b, sizeof b, c->vmax * k / 4);
        text(cr, bx + bw + 3, top + h - k * h / 4 + 4, 9, 0, b, 0);
    }
    if (c->ref > 0 && c->ref <= c->vmax) {
        double y = top + h - c->ref / c->vmax * h;
        cairo_set_source_rgb(cr, 1, 0, 0);
        cairo_set_line_width(cr, 2);
        cairo_move_to(cr, bx - 4, y); cairo_line_to(cr, bx + bw + 1, y); cairo_stroke(cr);
    }
    text(cr, bx + bw / 2, top + h + 20, 9, 0.5, "share (red: K/E)", 0);
}

int mk_plot_heatmap(const char *base, const char *title, int npanels, const mk_heat_panel *panels,
                    double vmax, double ref)
{
    heat_ctx c = { title, npanels, panels, vmax, ref };
    return render(base, draw_heat, &c);
}

/* ------------------------------------------------------------------ bars */
typedef struct {
    const char *title;
    int nr, nc;
    const mk_bar_panel *p;
    double ymax, ref;
} bars_ctx;

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void draw_bars(cairo_t *cr, const void *vctx)
{
    const bars_ctx *c = vctx;
    char b[64];
    text(cr, MK_PLOT_W / 2.0, 24, 16, 0.5, c->title, 0);
    double left = 60, right = 15, gapx = 40, gapy = 50, top = 72, bottom = 40;
    double w = (MK_PLOT_W - left - right - gapx * (c->nc - 1)) / c->nc;
    double h = (MK_PLOT_H - top - bottom - gapy * (c->nr - 1)) / c->nr;
    double ymax = c->ymax > 0 ? c->ymax * 1.05 : 1;
    for (int r = 0; r < c->nr; r++)
        for (int q = 0; q < c->nc; q++) {
            const mk_bar_panel *p = &c->p[r * c->nc + q];
            double x0 = left + q * (w + gapx), y0 = top + r * (h + gapy);
            axes(cr, x0, y0, w, h, 0, 0, 0, ymax, 0);
            text(cr, x0 + w / 2, y0 - 6, 11, 0.5, p->title, 0);
            double *v = malloc(sizeof(double) * (size_t)(p->n > 0 ? p->n : 1));
            if (!v) continue;
            memcpy(v, p->v, sizeof(double) * (size_t)p->n);
            qsort(v, (size_t)p->n, sizeof *v, cmp_desc);
            double bw = w / p->n;
            cairo_set_source_rgb(cr, palette[q % 10][0], palette[q % 10][1], palette[q % 10][2]);
            for (int e = 0; e < p->n; e++) {
                double bh = (isfinite(v[e]) ? v[e] : 0) / ymax * h;
                cairo_rectangle(cr, x0 + e * bw + bw * 0.1, y0 + h - bh, bw * 0.8, bh);
            }
            cairo_fill(cr);
            free(v);
            if (c->ref > 0 && c->ref <= ymax) {
                double y = y0 + h - c->ref / ymax * h;
                const double dash[] = { 6, 4 };
                cairo_save(cr);
                cairo_set_source_rgb(cr, 0.85, 0, 0);
                cairo_set_line_width(cr, 1.5);
                cairo_set_dash(cr, dash, 2, 0);
                cairo_move_to(cr, x0, y); cairo_line_to(cr, x0 + w, y); cairo_stroke(cr);
                cairo_restore(cr);
            }
            if (r == c->nr - 1) text(cr, x0 + w / 2, y0 + h + 16, 10, 0.5, "experts, sorted by frequency", 0);
        }
    snprintf(b, sizeof b, "red dashed: uniform K/E = %.4g", c->ref);
    text(cr, MK_PLOT_W - right, 44, 10, 1, b, 0);
    text(cr, 16, MK_PLOT_H / 2.0, 11, 0.5, "share of the domain's tokens", 1);
}

int mk_plot_bars(const char *base, const char *title, int nrows, int ncols, const mk_bar_panel *panels,
                 double ymax, double ref)
{
    bars_ctx c = { title, nrows, ncols, panels, ymax, ref };
    return render(base, draw_bars, &c);
}
