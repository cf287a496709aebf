function [x, t] = mef3fs_read(session_dir, channel, t0_uutc, t1_uutc)
% MEF3FS_READ  Read one channel of a mef3fs-mounted MEF 3.0 session.
%
%   [x, t] = mef3fs_read(session_dir, channel, t0_uutc, t1_uutc)
%
%   session_dir  a session folder of the mount, e.g.
%                '/mnt/mef/sub-01/night1.mefd'
%   channel      the channel's name as recorded, or its file name in the
%                mount (with or without the '.f32' ending)
%   t0_uutc, t1_uutc
%                the half-open time window [t0, t1) in uUTC (microseconds
%                since 1970, as in info.json). Omit both for the whole channel.
%
%   x            the samples, a column of single (float32) in the channel's
%                units; NaN where the recording has no data (gaps)
%   t            their times in uUTC, a column of double
%
%   No MEF library is needed: info.json says where every sample is, and the
%   channel file is raw float32, little-endian, sample i at byte 4*i, on a
%   grid shared by every channel of the same rate:
%       time of sample i = grid_start_uutc + i * 1e6 / sampling_frequency
%
%   The window is cut on that grid: samples i0 .. i1-1 with
%       i0 = round((t0 - grid_start) * fs / 1e6), i1 likewise for t1,
%   clipped to the file. Works in MATLAB (R2016b+, jsondecode) and GNU Octave
%   (7+).
%
%   MATLAB can also map the whole file without reading it:
%       m = memmapfile(fullfile(session_dir, 'LA1.f32'), 'Format', 'single');
%       x = m.Data(i0+1 : i1);      % pages are read on first touch
%   (memmapfile uses the machine's byte order, little-endian on every
%   platform MATLAB runs on today; Octave has no memmapfile.)

  info = jsondecode(fileread(fullfile(session_dir, 'info.json')));
  ch = find_channel(info, channel);

  fs = double(ch.sampling_frequency);     % Hz, may be non-integer
  grid0 = double(ch.grid_start_uutc);     % uUTC of sample 0 (same for every channel)
  n = double(ch.number_of_samples);       % samples in the file (= bytes / 4)
  if ~strcmp(ch.dtype, 'float32') || ~strcmp(ch.byte_order, 'little')
    error('mef3fs_read:format', 'unexpected %s %s', ch.dtype, ch.byte_order);
  end

  if nargin < 3 || isempty(t0_uutc)
    i0 = 0;
  else
    i0 = round((double(t0_uutc) - grid0) * fs / 1e6);
  end
  if nargin < 4 || isempty(t1_uutc)
    i1 = n;
  else
    i1 = round((double(t1_uutc) - grid0) * fs / 1e6);
  end
  i0 = min(max(i0, 0), n);
  i1 = min(max(i1, i0), n);
  count = i1 - i0;

  fid = fopen(fullfile(session_dir, ch.file), 'r', 'ieee-le');
  if fid < 0
    error('mef3fs_read:open', 'cannot open %s', fullfile(session_dir, ch.file));
  end
  cleanup = onCleanup(@() fclose(fid));
  if fseek(fid, 4 * i0, 'bof') ~= 0
    error('mef3fs_read:seek', 'cannot seek to sample %d: %s', i0, ferror(fid));
  end
  [x, got] = fread(fid, count, 'float32=>single', 'l');
  if got ~= count
    error('mef3fs_read:short', 'read %d of %d samples from %s', got, count, ch.file);
  end
  x = reshape(x, [], 1);
  t = grid0 + (i0 + (0:count-1)') * (1e6 / fs);
end

function ch = find_channel(info, channel)
% The entry of info.channels whose name, or file name, is CHANNEL.
  chans = info.channels;
  if isstruct(chans)
    chans = num2cell(chans);  % jsondecode gives a struct array when every
  end                         % entry has the same fields, else a cell array
  for k = 1:numel(chans)
    c = chans{k};
    if strcmp(c.name, channel) || strcmp(c.file, channel) ...
        || strcmp(c.file, [channel '.f32'])
      ch = c;
      return;
    end
  end
  error('mef3fs_read:channel', 'no channel "%s" in this session', channel);
end
