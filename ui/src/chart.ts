// A small live line chart on uPlot: mounts once, then `setData` on every new sample. `fmt`
// writes the axis ticks and the legend's values (default: the number and `unit` on the axis);
// `summary`, when given, is what a screen reader hears for the plot, which it cannot read.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { useEffect, useRef } from 'preact/hooks';
import { html } from './ui';

export interface Series {
  label: string;
  color: string;
}

export function Chart(props: {
  title: string;
  id: string;
  series: Series[];
  /** Time in seconds, then one column per series; null is a gap. */
  data: (number | null)[][];
  unit: string;
  fmt?: (v: number) => string;
  summary?: string;
}) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    if (!el.current) return;
    const fmt = props.fmt ?? ((v: number) => `${+v.toFixed(1)}${props.unit}`);
    const width = Math.max(240, el.current.clientWidth || 300);
    const opts: uPlot.Options = {
      width,
      height: 160,
      legend: { show: true },
      scales: { x: { time: true } },
      axes: [{}, { values: (_u, vals) => vals.map((v) => fmt(v)), size: props.fmt ? 70 : 60 }],
      series: [
        {},
        ...props.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 1.5,
          ...(props.fmt ? { value: (_u: uPlot, v: number | null) => (v == null ? '–' : fmt(v)) } : {}),
        })),
      ],
    };
    plot.current = new uPlot(opts, props.data as uPlot.AlignedData, el.current);
    const onResize = () => {
      if (el.current && plot.current) plot.current.setSize({ width: Math.max(240, el.current.clientWidth), height: 160 });
    };
    window.addEventListener('resize', onResize);
    return () => {
      window.removeEventListener('resize', onResize);
      plot.current?.destroy();
      plot.current = null;
    };
  }, []);
  useEffect(() => {
    plot.current?.setData(props.data as uPlot.AlignedData);
  }, [props.data]);
  return html`<figure class="chart" aria-labelledby=${props.id + '-t'}>
    <figcaption id=${props.id + '-t'}>${props.title}</figcaption>
    <div ref=${el} id=${props.id} data-points=${props.data[0]?.length ?? 0} data-last=${props.data[0]?.[props.data[0].length - 1] ?? ''}
      role=${props.summary ? 'img' : undefined} aria-label=${props.summary}></div>
  </figure>`;
}
